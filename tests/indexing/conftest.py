"""Shared synthetic data for the indexing tests: well-separated Gaussian blobs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _make_blobs(
    n_per_blob: int = 60, n_blobs: int = 4, dim: int = 16, spread: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Blob embeddings [n_blobs * n_per_blob, dim] float32 and their blob labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_blobs, dim)) * 3.0
    labels = np.repeat(np.arange(n_blobs), n_per_blob)
    x = centers[labels] + spread * rng.normal(size=(labels.size, dim))
    return x.astype(np.float32), labels


@pytest.fixture
def make_blobs() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The blob generator, for tests that need other sizes."""
    return _make_blobs


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """240 items in 4 blobs of 60, 16 dims."""
    return _make_blobs()
