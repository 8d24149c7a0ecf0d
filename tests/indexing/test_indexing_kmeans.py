from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmrec.indexing.kmeans import balanced_assign, kmeans, nearest_centroids, sq_distances


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of items whose cluster's majority blob is their own blob."""
    hits = 0
    for c in np.unique(labels):
        hits += np.bincount(truth[labels == c]).max()
    return hits / labels.size


def test_recovers_blobs(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, truth = blobs
    c, a = kmeans(torch.from_numpy(x), 4, seed=0)
    assert c.shape == (4, x.shape[1]) and c.dtype == torch.float32
    assert a.shape == (x.shape[0],) and a.dtype == torch.int64
    assert _purity(a.numpy(), truth) == 1.0
    assert len(np.unique(a.numpy())) == 4


def test_deterministic_and_assignments_match_centroids(
    blobs: tuple[np.ndarray, np.ndarray],
) -> None:
    x = torch.from_numpy(blobs[0])
    c1, a1 = kmeans(x, 7, seed=3, batch_size=50)
    c2, a2 = kmeans(x, 7, seed=3)
    assert torch.equal(a1, a2)
    torch.testing.assert_close(c1, c2)
    nearest, _ = nearest_centroids(x, c1)
    assert torch.equal(nearest, a1)
    state = torch.get_rng_state()
    kmeans(x, 3, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_nearest_centroids_matches_bruteforce() -> None:
    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(300, 8, generator=gen), torch.randn(13, 8, generator=gen)
    labels, d2 = nearest_centroids(x, c, batch_size=64)
    full = torch.cdist(x.double(), c.double()) ** 2
    assert torch.equal(labels, full.argmin(1))
    torch.testing.assert_close(d2.double(), full.min(1).values, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sq_distances(x, c).double(), full, atol=1e-4, rtol=1e-4)
    mask = torch.zeros(13, dtype=torch.bool)
    mask[labels[0]] = True
    masked, _ = nearest_centroids(x[:1], c, mask=mask)
    assert int(masked[0]) != int(labels[0])


@pytest.mark.parametrize(("n", "k"), [(5, 8), (3, 3), (1, 4)])
def test_k_at_least_distinct_points(n: int, k: int) -> None:
    distinct = torch.randn(n, 6, generator=torch.Generator().manual_seed(n))
    x = distinct.repeat(20, 1)  # many copies of n distinct points
    c, a = kmeans(x, k, seed=0)
    assert c.shape == (k, 6) and torch.isfinite(c).all()
    # Every point sits exactly on its centroid.
    torch.testing.assert_close(c[a], x, atol=1e-5, rtol=0)
    assert len(torch.unique(a)) == n


def test_balanced_mode_caps_cluster_sizes() -> None:
    gen = torch.Generator().manual_seed(0)
    # Very unequal blobs: 300 / 60 / 20 / 20 points.
    centers = torch.randn(4, 8, generator=gen) * 5
    sizes = torch.tensor([300, 60, 20, 20])
    x = centers.repeat_interleave(sizes, 0) + 0.2 * torch.randn(400, 8, generator=gen)
    k = 8
    _, plain = kmeans(x, k, seed=0)
    _, a = kmeans(x, k, seed=0, balanced=True)
    counts = torch.bincount(a, minlength=k)
    assert counts.sum() == 400
    assert counts.max() <= math.ceil(400 / k)
    assert torch.bincount(plain, minlength=k).max() > counts.max()


def test_balanced_assign_prefers_nearest_when_capacity_allows() -> None:
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    c = torch.tensor([[0.0], [10.0]])
    labels, d2 = balanced_assign(x, c)
    assert labels.tolist() == [0, 0, 1, 1]
    # Capacity 1 per cluster over 2 clusters cannot hold 4 points.
    with pytest.raises(ValueError, match="cannot hold"):
        balanced_assign(x, c, capacity=1)
    labels, _ = balanced_assign(x, c, capacity=3)
    assert labels.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(d2, torch.tensor([0.0, 0.01, 0.0, 0.01]), atol=1e-5, rtol=0)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        kmeans(torch.zeros(0, 3), 2, seed=0)
    with pytest.raises(ValueError):
        kmeans(torch.zeros(4, 3), 0, seed=0)
