"""Metrics against an independent formulation on hand-computed cases; honest ties; bad scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.eval.metrics import (
    MetricError,
    bootstrap_ci,
    coverage_at,
    hit_at,
    invalid_share,
    mean_popularity,
    mrr_at,
    ndcg_at,
    ranks_from_lists,
    ranks_from_scores,
    top_k,
)


def test_hand_computed_case() -> None:
    recs = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "d"]]
    ranks = ranks_from_lists(recs, ["b", "b", "a"])
    assert list(ranks) == [1, 2, math.inf]
    assert hit_at(ranks, 2).tolist() == [1, 0, 0]
    assert hit_at(ranks, 3).tolist() == [1, 1, 0]
    # NDCG with one relevant item: 1/log2(rank+2): rank 1 → 1/log2(3), rank 2 → 1/2.
    assert ndcg_at(ranks, 3).tolist() == pytest.approx([1 / math.log2(3), 0.5, 0.0])
    assert mrr_at(ranks, 3).tolist() == pytest.approx([0.5, 1 / 3, 0.0])
    assert mrr_at(ranks, 1).tolist() == [0, 0, 0]


def reference_ndcg(recommended: list[str], target: str, k: int) -> float:
    """DCG over the list / ideal DCG, the textbook way."""
    dcg = sum(1 / math.log2(i + 2) for i, item in enumerate(recommended[:k]) if item == target)
    return dcg / 1.0  # one relevant item: the ideal DCG is 1/log2(2) = 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.permutations(list("abcdefgh")), min_size=1, max_size=10),
    st.lists(st.sampled_from("abcdefghz"), min_size=10, max_size=10),
    st.integers(1, 8),
)
def test_matches_textbook_formulas(lists: list[list[str]], targets: list[str], k: int) -> None:
    targets = targets[: len(lists)]
    ranks = ranks_from_lists(lists, targets)
    for row, t, r in zip(lists, targets, ranks, strict=True):
        assert ndcg_at(np.array([r]), k)[0] == pytest.approx(reference_ndcg(row, t, k))
        assert hit_at(np.array([r]), k)[0] == float(t in row[:k])
        rr = next((1 / (i + 1) for i, x in enumerate(row[:k]) if x == t), 0.0)
        assert mrr_at(np.array([r]), k)[0] == pytest.approx(rr)


def test_ties_count_against_the_target() -> None:
    scores = np.zeros((4, 10))  # a constant scorer
    ranks = ranks_from_scores(scores, np.array([0, 3, 5, 9]))
    assert ranks.tolist() == [9, 9, 9, 9]  # below every tied item: never a hit@k<10
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    assert ranks_from_scores(scores, np.array([0])).tolist() == [2]  # tied with item 2 → below it
    assert ranks_from_scores(np.array([[0.0, -np.inf]]), np.array([1])).tolist() == [math.inf]


def test_constant_scorer_gets_chance_level_with_random_ties() -> None:
    n_users, n_items, k = 4000, 50, 10
    idx, _ = top_k(np.zeros((n_users, n_items)), k, seed=1)
    targets = np.random.default_rng(2).integers(0, n_items, n_users)
    hits = (idx == targets[:, None]).any(1).mean()
    assert hits == pytest.approx(k / n_items, abs=0.02)  # chance: 0.2


def test_top_k_orders_by_score() -> None:
    idx, vals = top_k(np.array([[0.1, 0.9, 0.5, -np.inf]]), 3)
    assert idx.tolist() == [[1, 2, 0]] and vals.tolist() == [[0.9, 0.5, 0.1]]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_scores_are_errors(bad: float) -> None:
    scores = np.array([[0.1, bad, 0.3]])
    with pytest.raises(MetricError):
        ranks_from_scores(scores, np.array([1]))
    with pytest.raises(MetricError):
        top_k(scores, 2)


def test_catalog_level_metrics() -> None:
    recs = [["a", "b", "a"], ["x", "", "c"]]
    assert coverage_at(recs, 2, 4) == pytest.approx(3 / 4)  # a, b, x
    assert invalid_share(recs, 3, {"a", "b", "c"}) == pytest.approx(3 / 6)  # dup a, x, ""
    assert mean_popularity(recs, 1, {"a": 0.5, "x": 0.1}) == pytest.approx(0.3)


def test_bootstrap_ci_brackets_the_mean() -> None:
    values = np.random.default_rng(0).random(500)
    low, high = bootstrap_ci(values, 500)
    assert low < values.mean() < high and high - low < 0.1
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
