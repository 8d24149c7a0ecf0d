"""Users as vectors, clustered: who shares an adapter in the per-user stage.

**Representation** (``sid_prefix``): a user is the histogram of the semantic-ID prefixes of the
items in their *training* history (held-out items never enter it) — for each level ``l`` up to
``prefix_levels``, the share of the history under each length-``l`` prefix present in the
catalog. Each level's histogram is square-rooted, so the Euclidean distance k-means uses is the
Hellinger distance between the users' taste distributions, and every level weighs the same.
The SIDs are built from item content (semantic clusters of titles and genres), so the first
level is a coarse genre profile and deeper levels are finer. It needs nothing trained and
nothing from ``eval`` (the import rules keep ``train`` away from ``eval.sasrec``; see
docs/per_user.md for how a SASRec state would plug in).

**Groups**: k-means (``llmrec.indexing.kmeans``, seeded) over those vectors, and optionally the
heaviest users (at least ``heavy_min_interactions`` training interactions, at most
``max_heavy_users`` of them) each on an adapter of their own.

**Slices**: every group owns one slice of the stage's sliced LoRA — slices ``0..K-1`` the
clusters (or the gated mixture's experts), ``K..K+H-1`` the heavy users. ``slice_table`` gives
each user's fixed slice weights: one-hot on their cluster or heavy slice, or, in mixture mode,
left to the gate (``gate_init``: a linear layer initialised to the soft k-means assignment).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from llmrec.indexing.sid_map import SemanticIdMap

logger = logging.getLogger(__name__)

Mode = Literal["clusters", "mixture", "shared"]


def prefix_histograms(
    histories: Sequence[Sequence[str]], sid_map: SemanticIdMap, levels: int
) -> np.ndarray:
    """Square-rooted SID-prefix histograms, one row per history [n, Σ_l prefixes at level l].

    Items without a SID are skipped; an empty history is a zero row.
    """
    index = {item: i for i, item in enumerate(sid_map.item_ids)}
    rows = [np.asarray([index[i] for i in h if i in index], dtype=np.int64) for h in histories]
    blocks = []
    for level in range(1, min(levels, sid_map.levels) + 1):
        _, column = np.unique(sid_map.codes[:, :level], axis=0, return_inverse=True)
        column = column.reshape(-1)
        hist = np.zeros((len(rows), int(column.max()) + 1), dtype=np.float64)
        for u, items in enumerate(rows):
            if len(items):
                hist[u] = np.bincount(column[items], minlength=hist.shape[1]) / len(items)
        blocks.append(np.sqrt(hist))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def heavy_users(counts: Sequence[int], min_interactions: int, limit: int) -> list[int]:
    """Indices of the users with at least ``min_interactions`` (0: none), most active first,
    at most ``limit`` of them (ties by index)."""
    if min_interactions <= 0 or limit <= 0:
        return []
    order = sorted(range(len(counts)), key=lambda u: (-counts[u], u))
    return [u for u in order if counts[u] >= min_interactions][:limit]


@dataclass(frozen=True)
class UserGroups:
    """Users, their vectors, their k-means cluster, and the heavy users with a slice each."""

    users: tuple[str, ...]
    features: np.ndarray  # float32 [n, D]
    clusters: np.ndarray  # int64 [n]: k-means label (heavy users keep theirs, for reports)
    centroids: np.ndarray  # float32 [K, D]
    heavy: tuple[int, ...]  # user indices with a slice of their own

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])

    def n_slices(self, mode: Mode) -> int:
        """Slices of the sliced LoRA: 1 (shared), or one per cluster/expert and heavy user."""
        return 1 if mode == "shared" else self.k + len(self.heavy)

    def slice_table(self, mode: Mode) -> tuple[np.ndarray, np.ndarray]:
        """Fixed slice weights [n, S] and whether the gate sets a user's weights [n] (bool)."""
        n, slices = len(self.users), self.n_slices(mode)
        table = np.zeros((n, slices), dtype=np.float32)
        gated = np.zeros(n, dtype=bool)
        if mode == "shared":
            table[:, 0] = 1.0
            return table, gated
        if mode == "clusters":
            table[np.arange(n), self.clusters] = 1.0
        else:
            gated[:] = True
        for h, u in enumerate(self.heavy):
            table[u] = 0.0
            table[u, self.k + h] = 1.0
            gated[u] = False
        return table, gated

    def gate_init(self, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        """``(W [K, D], b [K])`` with ``softmax(W x + b)`` = the soft k-means assignment
        ``softmax(-|x - c_k|² / T)``, ``T`` = ``temperature`` × the mean squared distance of a
        user to their own centroid (so the temperature is free of the features' scale)."""
        c = self.centroids.astype(np.float64)
        x = self.features.astype(np.float64)
        own = ((x - c[self.clusters]) ** 2).sum(1).mean()
        t = max(temperature * float(own), 1e-6)
        return (2 * c / t).astype(np.float32), (-(c**2).sum(1) / t).astype(np.float32)


def build_groups(
    users: Sequence[str],
    histories: Sequence[Sequence[str]],
    sid_map: SemanticIdMap,
    *,
    clusters: int,
    prefix_levels: int = 1,
    heavy_min_interactions: int = 0,
    max_heavy_users: int = 0,
    kmeans_iters: int = 50,
    seed: int = 0,
) -> UserGroups:
    """Represent, cluster and pick the heavy users (see the module docstring)."""
    import torch

    from llmrec.indexing.kmeans import kmeans

    features = prefix_histograms(histories, sid_map, prefix_levels)
    k = max(1, min(clusters, len(users)))
    if k < clusters:
        logger.warning("only %d users: %d clusters instead of %d", len(users), k, clusters)
    centroids, labels = kmeans(torch.from_numpy(features), k, n_iter=kmeans_iters, seed=seed)
    heavy = heavy_users([len(h) for h in histories], heavy_min_interactions, max_heavy_users)
    sizes = np.bincount(labels.numpy(), minlength=k)
    logger.info(
        "%d users in %d clusters (sizes %d–%d), %d heavy users with their own adapter",
        len(users),
        k,
        int(sizes.min()),
        int(sizes.max()),
        len(heavy),
    )
    return UserGroups(
        tuple(str(u) for u in users),
        features,
        labels.numpy().astype(np.int64),
        centroids.numpy().astype(np.float32),
        tuple(heavy),
    )
