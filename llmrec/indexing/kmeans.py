"""Vectorised k-means on torch tensors (CPU or GPU), deterministic for a seed.

Distances are computed batch by batch as ``||x||² - 2 x·c + ||c||²`` with one matmul per batch,
so memory stays at ``batch_size × k`` floats whatever the number of points. Initialisation is
greedy k-means++ (as scikit-learn) on a random subsample, which is nearly as good as k-means++
on all points at a fraction of the cost for large N. All randomness comes from a
``torch.Generator`` seeded by the caller; the global RNG is never touched.

Balanced mode (``balanced=True``) replaces the nearest-centroid step by a capacity-constrained
greedy assignment (:func:`balanced_assign`): every cluster holds at most ``ceil(N / k)`` points.
Points are assigned in rounds: each unassigned point proposes to its nearest non-full cluster and
each cluster keeps its closest proposers up to its remaining capacity; the rejected points retry
in the next round. This is the "greedy by distance" heuristic used by balanced RQ-KMeans in
OneRec-style tokenisers; it is not an optimal transport solution, but it is exact about capacity,
deterministic and fully vectorised (at most ``k`` rounds, usually a handful).
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

__all__ = ["balanced_assign", "kmeans", "kmeans_plus_plus", "nearest_centroids", "sq_distances"]


def sq_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows of ``x`` [n, D] and ``centroids`` [k, D] → [n, k]."""
    c_sq = (centroids * centroids).sum(1)
    x_sq = (x * x).sum(1, keepdim=True)
    d = torch.addmm(c_sq, x, centroids.T, alpha=-2.0).add_(x_sq)
    return d.clamp_(min=0.0)


def nearest_centroids(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    batch_size: int = 65536,
    index: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row of ``x`` (or of ``x[index]``): (labels int64, squared dists).

    ``mask`` is an optional bool [k] marking centroids that may not be chosen. Ties go to the
    lowest centroid index.
    """
    n = x.shape[0] if index is None else index.shape[0]
    c_sq = (centroids * centroids).sum(1)
    if mask is not None:
        # +inf on a forbidden centroid's norm keeps it out of every argmin at no extra cost.
        c_sq = c_sq.masked_fill(mask, float("inf"))
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    dists = torch.empty(n, dtype=x.dtype, device=x.device)
    ct = centroids.T
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        xb = x[start:stop] if index is None else x[index[start:stop]]
        # ||x||² is constant per row, so it is added after the min over centroids.
        d = torch.addmm(c_sq, xb, ct, alpha=-2.0)
        dmin, amin = d.min(1)
        labels[start:stop] = amin
        dists[start:stop] = (dmin + (xb * xb).sum(1)).clamp_(min=0.0)
    return labels, dists


def balanced_assign(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    capacity: int | None = None,
    batch_size: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Capacity-constrained greedy assignment: every cluster gets at most ``capacity`` points.

    ``capacity`` defaults to ``ceil(n / k)``. Returns (labels, squared distance to own centroid).
    """
    n, k = x.shape[0], centroids.shape[0]
    cap = math.ceil(n / k) if capacity is None else capacity
    if cap * k < n:
        raise ValueError(f"capacity {cap} × {k} clusters cannot hold {n} points")
    remaining = torch.full((k,), cap, dtype=torch.int64, device=x.device)
    labels = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    dists = torch.zeros(n, dtype=x.dtype, device=x.device)
    active: torch.Tensor | None = None  # None means "all points", avoiding an index copy
    n_rounds = 0
    while active is None or active.numel() > 0:
        n_rounds += 1
        prop, d = nearest_centroids(
            x, centroids, batch_size=batch_size, index=active, mask=remaining == 0
        )
        ids = torch.arange(n, device=x.device) if active is None else active
        # Sort proposals by (cluster, distance): two stable sorts, secondary key first.
        order = torch.sort(d, stable=True).indices
        order = order[torch.sort(prop[order], stable=True).indices]
        prop_s = prop[order]
        counts = torch.bincount(prop_s, minlength=k)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(prop_s.numel(), device=x.device) - starts[prop_s]
        accept = rank < remaining[prop_s]
        won = order[accept]
        labels[ids[won]] = prop_s[accept]
        dists[ids[won]] = d[won]
        remaining -= torch.bincount(prop_s[accept], minlength=k)
        active = torch.sort(ids[order[~accept]]).values
    logger.debug("balanced_assign: %d points, %d clusters, %d rounds", n, k, n_rounds)
    return labels, dists


def _sample_index(cum: torch.Tensor, n_draws: int, gen: torch.Generator) -> torch.Tensor:
    """Draw indices with probability proportional to the increments of ``cum`` (a cumsum)."""
    u = torch.rand(n_draws, generator=gen, dtype=cum.dtype) * cum[-1]
    return torch.searchsorted(cum, u).clamp_(max=cum.numel() - 1)


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + ln k local trials per centre, as scikit-learn) → [k, D].

    If ``x`` has fewer than ``k`` distinct rows, the missing centres are copies of chosen ones.
    """
    n = x.shape[0]
    n_trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen).item())
    centers = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    centers[0] = x[first]
    closest = sq_distances(x, x[first : first + 1]).squeeze(1).double()
    for i in range(1, k):
        potential = float(closest.sum())
        if potential <= 0.0:
            # Every point coincides with a chosen centre: fewer than k distinct points.
            logger.warning("k-means++: only %d distinct points for k=%d; duplicating centres", i, k)
            centers[i:] = centers[torch.arange(k - i, device=x.device) % i]
            break
        cand = _sample_index(torch.cumsum(closest, 0).cpu(), n_trials, gen).to(x.device)
        d_cand = torch.minimum(closest[None, :], sq_distances(x[cand], x).double())
        best = int(torch.argmin(d_cand.sum(1)).item())
        centers[i] = x[cand[best]]
        closest = d_cand[best]
    return centers


def _update_centroids(
    x: torch.Tensor,
    labels: torch.Tensor,
    dists: torch.Tensor,
    old: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """Mean of each cluster; empty clusters are re-seeded on the points farthest from theirs."""
    k = old.shape[0]
    sums = torch.zeros_like(old)
    for start in range(0, x.shape[0], batch_size):
        sums.index_add_(0, labels[start : start + batch_size], x[start : start + batch_size])
    counts = torch.bincount(labels, minlength=k)
    new = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
    empty = torch.nonzero(counts == 0).squeeze(1)
    if empty.numel():
        far_d, far = torch.topk(dists, min(empty.numel(), dists.numel()))
        far = far[far_d > 0]  # a point sitting on its centroid would just duplicate it
        n_fill = far.numel()
        new[empty[:n_fill]] = x[far]
        new[empty[n_fill:]] = old[empty[n_fill:]]
    return new


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_iter: int = 25,
    seed: int,
    balanced: bool = False,
    batch_size: int = 65536,
    init_sample: int | None = None,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means on rows of ``x`` [N, D] → (centroids [k, D] float32, assignments [N] int64).

    ``init_sample`` is the number of points k-means++ sees (default ``max(64 k, 10_000)``);
    iterations stop early once at most ``tol × N`` points change cluster. The returned assignments
    are computed with the returned centroids. With fewer than ``k`` distinct points, some
    centroids are duplicates and stay empty.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = x.float()
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    n_init = min(n, init_sample if init_sample is not None else max(64 * k, 10_000))
    sub = x if n_init == n else x[torch.randperm(n, generator=gen)[:n_init].to(x.device)]
    centroids = kmeans_plus_plus(sub, k, gen)

    def assign(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if balanced:
            return balanced_assign(x, c, batch_size=batch_size)
        return nearest_centroids(x, c, batch_size=batch_size)

    labels, dists = assign(centroids)
    for it in range(n_iter):
        centroids = _update_centroids(x, labels, dists, centroids, batch_size)
        new_labels, dists = assign(centroids)
        changed = int((new_labels != labels).sum())
        labels = new_labels
        logger.debug("kmeans it=%d changed=%d inertia=%.4g", it, changed, float(dists.sum()))
        if changed <= tol * n:
            break
    return centroids, labels
