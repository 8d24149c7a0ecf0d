from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llmrec.indexing.collisions import Method, group_rows, resolve_collisions
from llmrec.indexing.quantizers import QuantizerConfig, build_quantizer, make_distance_fn


def n_unique(codes: np.ndarray) -> int:
    return len({tuple(r) for r in codes.tolist()})


def table_distance_fn(table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A distance_fn that looks rows up in a fixed [N, K] table."""
    return lambda idx: table[idx]


def test_suffix_hand_case() -> None:
    codes = np.array([[0, 0], [0, 0], [1, 2], [0, 0]])
    out, rep = resolve_collisions(codes, method="suffix", codebook_size=4)
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 0, 1], [1, 2, 0], [0, 0, 2]])
    assert rep.collisions_before == 2
    assert rep.collision_rate_before == 0.5
    assert rep.max_group_size_before == 3
    assert rep.colliding_groups_before == 1
    assert (rep.levels_before, rep.levels_after, rep.suffix_size) == (2, 3, 3)
    assert rep.collisions_after == 0 and not rep.suffix_overflow


def test_no_collisions_adds_no_level_unless_forced() -> None:
    codes = np.array([[0, 1], [1, 0], [1, 1]])
    out, rep = resolve_collisions(codes, method="suffix")
    np.testing.assert_array_equal(out, codes)
    assert rep.levels_after == 2 and rep.suffix_size == 0 and rep.collisions_before == 0
    out, rep = resolve_collisions(codes, method="suffix", always_suffix=True)
    np.testing.assert_array_equal(out, np.c_[codes, np.zeros(3, dtype=np.int64)])
    assert rep.levels_after == 3 and rep.suffix_size == 1


def test_reassign_moves_to_nearest_free_code() -> None:
    # Items 0, 1, 2 share (0, 0); item 3 holds (0, 1); item 4 is alone under prefix 1.
    codes = np.array([[0, 0], [0, 0], [0, 0], [0, 1], [1, 0]])
    dist = np.array(
        [
            [0.5, 0.1, 0.9, 0.8],  # wants code 1, but item 3 holds it
            [0.2, 0.3, 0.4, 0.1],  # closest to the shared code 0 → keeps it
            [0.9, 0.1, 0.3, 0.2],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    out, rep = resolve_collisions(
        codes, method="reassign", distance_fn=table_distance_fn(dist), codebook_size=4
    )
    # Item 0: code 1 taken → next nearest free is 2 (0.9 vs 0.8 → 3)... 0.8 at code 3 < 0.9.
    # Item 2: 0.2 at code 3 beats item 0's 0.8 there, so item 2 gets 3 and item 0 gets 2.
    np.testing.assert_array_equal(out, [[0, 2], [0, 0], [0, 3], [0, 1], [1, 0]])
    assert rep.reassigned == 2 and rep.collisions_after == 0 and rep.levels_after == 2


def test_reassign_needs_distances_and_may_leave_collisions() -> None:
    codes = np.zeros((4, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="distance_fn"):
        resolve_collisions(codes, method="reassign")
    dist = np.zeros((4, 2))  # only 2 last-level codes for 4 identical items
    out, rep = resolve_collisions(codes, method="reassign", distance_fn=table_distance_fn(dist))
    assert rep.reassigned == 1 and rep.unresolved_after_reassign == 2
    assert rep.collisions_after == 2 and n_unique(out) == 2
    out, rep = resolve_collisions(
        codes, method="reassign+suffix", distance_fn=table_distance_fn(dist)
    )
    assert rep.collisions_after == 0 and rep.levels_after == 3 and n_unique(out) == 4


@pytest.mark.parametrize(("n_dup", "n_codes"), [(40, 64), (40, 30), (300, 256)])
def test_reassign_many_identical_items_beyond_greedy_rounds(n_dup: int, n_codes: int) -> None:
    # n_dup identical items share (0, 0) and all want the same codes, so the greedy rounds run
    # out and the one-step finish takes over; the last item, (1, 5), is alone in its prefix.
    codes = np.zeros((n_dup + 1, 2), dtype=np.int64)
    codes[-1] = [1, 5]
    dist = np.tile(np.linspace(0, 1, n_codes), (n_dup + 1, 1))
    out, rep = resolve_collisions(
        codes, method="reassign+suffix", distance_fn=table_distance_fn(dist)
    )
    movable = min(n_dup - 1, n_codes - 1)
    assert rep.reassigned == movable
    assert rep.unresolved_after_reassign == n_dup - 1 - movable
    assert rep.collisions_after == 0 and n_unique(out) == n_dup + 1
    np.testing.assert_array_equal(out[:, 0], codes[:, 0])
    np.testing.assert_array_equal(out[-1, :2], [1, 5])
    # Moved items took the nearest codes first: exactly codes 0..movable are in use.
    assert sorted(set(out[:n_dup, 1].tolist())) == list(range(movable + 1))


@pytest.mark.parametrize("method", ["suffix", "reassign", "reassign+suffix"])
def test_adversarial_duplicates(
    method: Method, make_blobs: Callable[..., tuple[np.ndarray, np.ndarray]]
) -> None:
    blobs, _ = make_blobs(n_per_blob=50, n_blobs=4, dim=8)
    dup = np.repeat(blobs[:1], 500, axis=0)  # 500 identical embeddings
    x = np.concatenate([blobs, dup])
    cfg = QuantizerConfig(levels=3, codebook_size=16, seed=0)
    q = build_quantizer("rq_kmeans", cfg)
    codes = q.fit_encode(x)
    out, rep = resolve_collisions(
        codes, method=method, distance_fn=make_distance_fn(q, x, codes), codebook_size=16
    )
    assert rep.max_group_size_before >= 501
    assert rep.collisions_before >= 500
    if method == "reassign":
        assert rep.collisions_after > 0  # only 15 free codes for ~500 items
        return
    assert rep.collisions_after == 0 and n_unique(out) == len(x)
    assert rep.suffix_overflow and rep.suffix_size > 16
    assert out.shape == (len(x), 4)
    np.testing.assert_array_equal(out[:, :2], codes[:, :2])  # prefixes never change


def test_reassign_keeps_non_colliding_items(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    q = build_quantizer("rq_kmeans", QuantizerConfig(levels=2, codebook_size=8, seed=0))
    codes = q.fit_encode(x)
    groups, counts = group_rows(codes)
    alone = counts[groups] == 1
    assert (~alone).any()
    out, rep = resolve_collisions(
        codes, method="reassign+suffix", distance_fn=make_distance_fn(q, x, codes)
    )
    np.testing.assert_array_equal(out[alone, :2], codes[alone])
    np.testing.assert_array_equal(out[:, :1], codes[:, :1])
    assert rep.collisions_after == 0 and rep.reassigned > 0


def test_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown collision method"):
        resolve_collisions(np.zeros((2, 2)), method="drop")  # type: ignore[arg-type]


@st.composite
def codes_and_distances(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 40))
    levels = draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    codes = draw(hnp.arrays(np.int64, (n, levels), elements=st.integers(0, k - 1)))
    dist = draw(
        hnp.arrays(np.float64, (n, k), elements=st.floats(0, 10, allow_nan=False, width=32))
    )
    return codes, dist


@settings(max_examples=150, deadline=None)
@given(data=codes_and_distances(), method=st.sampled_from(["suffix", "reassign+suffix"]))
def test_property_unique_after_and_prefixes_kept(
    data: tuple[np.ndarray, np.ndarray], method: str
) -> None:
    codes, dist = data
    n, levels = codes.shape
    out, rep = resolve_collisions(
        codes,
        method=method,  # type: ignore[arg-type]
        distance_fn=table_distance_fn(dist),
    )
    assert n_unique(out) == n and rep.collisions_after == 0
    assert out.shape[1] in (levels, levels + 1) and out.shape[1] == rep.levels_after
    groups, counts = group_rows(codes)
    was_unique = counts[groups] == 1
    # Rows that were unique keep their codes; every row keeps its prefix.
    np.testing.assert_array_equal(out[was_unique, :levels], codes[was_unique])
    np.testing.assert_array_equal(out[:, : levels - 1], codes[:, : levels - 1])
    if method == "suffix":
        np.testing.assert_array_equal(out[:, :levels], codes)
    assert rep.collisions_before == n - len(counts)
    assert out.min() >= 0
