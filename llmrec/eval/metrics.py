"""Ranking metrics: arrays in, numbers out. Imports nothing from llmrec.

Every metric here has exactly one relevant item per case (next-item prediction), so
Recall@K = HR@K. Ranks are 0-based; a missing target has rank ``np.inf``.

Ties never flatter a model: ``ranks_from_scores`` puts the target *below* every item with an
equal score (a constant scorer lands at the bottom), and ``top_k`` breaks ties by a seeded
random permutation (a constant scorer gets chance-level numbers). NaN and +inf scores are
errors, never hits; -inf marks an item that must not be recommended (excluded, padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class MetricError(ValueError):
    """Scores or recommendations that cannot be evaluated honestly."""


def check_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as float64; NaN or +inf anywhere is an error."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise MetricError("scores contain NaN")
    if np.isposinf(scores).any():
        raise MetricError("scores contain +inf")
    return scores


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target column among all columns, ties counted against it.

    rank = #(other items with score ≥ the target's); a target scored -inf gets rank ``inf``.
    """
    scores = check_scores(scores)
    targets = np.asarray(targets, dtype=np.int64)
    target_scores = scores[np.arange(len(scores)), targets]
    ranks = (scores >= target_scores[:, None]).sum(1) - 1
    return np.where(np.isneginf(target_scores), np.inf, ranks.astype(np.float64))


def top_k(scores: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best columns per row, ties broken by a seeded shuffle."""
    scores = check_scores(scores)
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random(scores.shape), axis=1)  # a random order per row
    shuffled = np.take_along_axis(scores, perm, 1)
    k = min(k, scores.shape[1])
    part = (
        np.argpartition(-shuffled, k - 1, axis=1)[:, :k]
        if k < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    )
    part_scores = np.take_along_axis(shuffled, part, 1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, 1)
    return np.take_along_axis(perm, best, 1), np.take_along_axis(shuffled, best, 1)


def ranks_from_lists(recommended: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """0-based position of each target in its recommendation list (``inf`` if absent)."""
    out = np.full(len(targets), np.inf)
    for u, (row, target) in enumerate(zip(recommended, targets, strict=True)):
        for pos, item in enumerate(row):
            if item == target:
                out[u] = pos
                break
    return out


def hit_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 where the target is in the top k."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks < k
    return np.where(inside, 1.0 / np.log2(np.where(inside, ranks, 0) + 2.0), 0.0)


def mrr_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank inside the top k, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks < k
    return np.where(inside, 1.0 / (np.where(inside, ranks, 0) + 1.0), 0.0)


def coverage_at(recommended: Sequence[Sequence[str]], k: int, catalog_size: int) -> float:
    """Share of the catalog that appears in anyone's top k."""
    seen = {item for row in recommended for item in row[:k] if item}
    return len(seen) / catalog_size if catalog_size else 0.0


def invalid_share(recommended: Sequence[Sequence[str]], k: int, catalog: set[str]) -> float:
    """Share of top-k slots that are empty, not in the catalog, or repeat an earlier slot."""
    bad = total = 0
    for row in recommended:
        seen: set[str] = set()
        for item in row[:k]:
            total += 1
            if not item or item not in catalog or item in seen:
                bad += 1
            seen.add(item)
    return bad / total if total else 0.0


def mean_popularity(
    recommended: Sequence[Sequence[str]], k: int, popularity: dict[str, float]
) -> float:
    """Mean popularity (e.g. share of training interactions) of the recommended items."""
    values = [popularity.get(item, 0.0) for row in recommended for item in row[:k] if item]
    return float(np.mean(values)) if values else 0.0


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over cases (users)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 100):  # 100 resamples at a time bounds memory
        stop = min(n_resamples, start + 100)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[idx].mean(1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)
