from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from llmrec.indexing.diagnostics import (
    code_diagnostics,
    format_diagnostics_table,
    prefix_similarity,
)


def test_code_diagnostics_hand_case() -> None:
    codes = np.array([[0, 0], [0, 1], [1, 0], [0, 0]])
    d = code_diagnostics(codes, [2, 4])
    assert d["n_items"] == 4 and d["levels"] == 2
    lv0, lv1 = d["per_level"]
    assert (lv0["used"], lv0["utilisation"]) == (2, 1.0)
    assert (lv1["used"], lv1["utilisation"]) == (2, 0.5)
    p = np.array([0.75, 0.25])
    assert math.isclose(lv0["perplexity"], math.exp(-(p * np.log(p)).sum()))
    assert math.isclose(lv1["perplexity"], lv0["perplexity"])
    depth1, depth2 = d["per_prefix"]
    assert (depth1["n_prefixes"], depth1["items_min"], depth1["items_max"]) == (2, 1, 3)
    assert depth1["items_mean"] == 2.0
    assert (depth2["n_prefixes"], depth2["items_min"], depth2["items_max"]) == (3, 1, 2)
    assert math.isclose(depth2["items_mean"], 4 / 3)
    assert d["collisions"] == {
        "n_unique": 3,
        "items_to_move": 1,
        "collision_rate": 0.25,
        "colliding_groups": 1,
        "max_group_size": 2,
    }
    table = format_diagnostics_table(d)
    assert "perplexity" in table and "items to move: 1 (25.00%)" in table
    assert len(table.splitlines()) == 11


def test_uniform_usage_has_full_perplexity_and_suffix_size_is_inferred() -> None:
    codes = np.array([[0, 0], [1, 1], [2, 2], [3, 9]])
    d = code_diagnostics(codes, 4)
    assert math.isclose(d["per_level"][0]["perplexity"], 4.0)
    assert d["per_level"][1]["codebook_size"] == 10  # a code above the given size lifts it
    d = code_diagnostics(codes, [4])
    assert d["per_level"][1]["codebook_size"] == 10


def test_prefix_similarity_within_beats_random(
    make_blobs: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    x, truth = make_blobs(n_per_blob=50, n_blobs=5, dim=16)
    codes = truth[:, None]
    s = prefix_similarity(x, codes, n_pairs=2000, seed=1)
    assert s["same_prefix_mean_cos"] > 0.9
    assert s["same_prefix_mean_cos"] > s["random_mean_cos"] + 0.5
    assert s == prefix_similarity(x, codes, n_pairs=2000, seed=1)  # seeded


def test_prefix_similarity_never_pairs_an_item_with_itself() -> None:
    # Orthogonal unit vectors: any pair of distinct items has cosine 0, an item with itself 1.
    x = np.eye(6, dtype=np.float32)
    codes = np.array([[0], [0], [1], [1], [2], [3]])
    s = prefix_similarity(x, codes, n_pairs=500)
    assert s["same_prefix_mean_cos"] == 0.0 and s["random_mean_cos"] == 0.0
    solo = prefix_similarity(x, np.arange(6)[:, None], n_pairs=10)
    assert solo["n_same_pairs"] == 0 and math.isnan(solo["same_prefix_mean_cos"])
