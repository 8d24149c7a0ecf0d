"""What every quantizer shares: its config, its protocol and the state-dict helpers.

``quantizers.py`` (RQ-KMeans, and the registry that picks a quantizer by name) and ``rqvae.py``
both build on this module, so neither needs the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self

import numpy as np
import torch

StateDict = dict[str, np.ndarray | int | float | str]


def default_codebook_size(n_items: int, levels: int = 3) -> int:
    """A codebook size suited to a catalog of ``n_items``: a power of two in [8, 256]."""
    # Aim for K ≈ 2 · n^(1/levels): the K^levels code space is then ≥ 8× the catalog, so few
    # tuples collide, while each first-level code still covers ~n^(2/3)/2 items (enough for its
    # token embedding to be learnt and for prefixes to mean something). Powers of two keep the
    # vocabulary tidy; 256 is the usual ceiling (TIGER, LC-Rec). Examples with 3 levels:
    # ML-100K (1,682 items) → 32 (3×32); 10k → 64; 100k → 128; ≥ 1M → 256.
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    target = 2.0 * n_items ** (1.0 / levels)
    return int(min(256, max(8, 2 ** math.ceil(math.log2(target)))))


@dataclass
class QuantizerConfig:
    """Settings for :func:`build_quantizer` (RQ-KMeans and RQ-VAE)."""

    method: Literal["rq_kmeans", "rq_vae"] = field(
        default="rq_kmeans", metadata={"help": "Quantizer: 'rq_kmeans' or 'rq_vae'."}
    )
    levels: int = field(default=3, metadata={"help": "Number of code levels (codebooks)."})
    codebook_size: int | None = field(
        default=256,
        metadata={"help": "Codes per level; null → default_codebook_size(n_items, levels)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for every random choice."})
    normalize: bool = field(
        default=False, metadata={"help": "L2-normalise embeddings before quantising."}
    )
    balanced: bool = field(
        default=False,
        metadata={"help": "RQ-KMeans: capacity-constrained (≈ N/K per code) assignment."},
    )
    kmeans_iters: int = field(default=25, metadata={"help": "Lloyd iterations per k-means."})
    kmeans_sample: int = field(
        default=200_000,
        metadata={"help": "RQ-KMeans: fit each level on at most this many items (0 → all)."},
    )
    batch_size: int = field(
        default=65536, metadata={"help": "Rows per distance batch when assigning codes."}
    )
    hidden_dims: tuple[int, ...] = field(
        default=(512, 256, 128), metadata={"help": "RQ-VAE: encoder hidden sizes (mirrored)."}
    )
    latent_dim: int = field(default=32, metadata={"help": "RQ-VAE: latent (codebook) dimension."})
    epochs: int = field(default=200, metadata={"help": "RQ-VAE: training epochs."})
    train_batch_size: int = field(default=1024, metadata={"help": "RQ-VAE: items per step."})
    lr: float = field(default=1e-3, metadata={"help": "RQ-VAE: Adam learning rate."})
    beta: float = field(default=0.25, metadata={"help": "RQ-VAE: commitment loss weight."})
    quant_weight: float = field(
        default=1.0, metadata={"help": "RQ-VAE: weight of the quantisation loss vs. MSE."}
    )
    dead_code_steps: int = field(
        default=50,
        metadata={"help": "RQ-VAE: reset a code unused for this many steps (0 → never)."},
    )
    kmeans_init: bool = field(
        default=True, metadata={"help": "RQ-VAE: initialise codebooks by k-means on latents."}
    )
    progress: bool = field(default=True, metadata={"help": "RQ-VAE: show a tqdm progress bar."})


class Quantizer(Protocol):
    """Maps embeddings [N, D] to int64 codes [N, levels]; fitted once, then reusable."""

    levels: int
    codebook_size: int

    def fit(self, x: np.ndarray) -> Self:
        """Learn the codebooks from ``x``."""
        ...

    def fit_encode(self, x: np.ndarray) -> np.ndarray:
        """Fit on ``x`` and return its codes (balanced if configured)."""
        ...

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Nearest-code tuples of ``x`` (row-independent) → int64 [N, levels]."""
        ...

    def last_level_distances(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Squared distances [n, K] from the last-level residual of ``x`` (built from the first
        ``levels - 1`` columns of ``codes``) to each last-level codeword."""
        ...

    def state_dict(self) -> StateDict:
        """Everything needed to encode new items later (numpy arrays and scalars)."""
        ...

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Self:
        """Rebuild a fitted quantizer from :meth:`state_dict` output."""
        ...


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """float32 tensor view of ``x`` (no copy when ``x`` is already contiguous float32)."""
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array [N, D], got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def state_scalar(d: Mapping[str, Any], key: str) -> Any:
    """A scalar from a state dict, also when it went through ``np.savez`` (0-d array)."""
    v = d[key]
    return v.item() if isinstance(v, np.ndarray | np.generic) else v


def state_flag(d: Mapping[str, Any], key: str) -> bool:
    """A boolean from a state dict, whether stored as bool, int or string."""
    v = state_scalar(d, key)
    return v.strip().lower() in ("1", "true", "yes") if isinstance(v, str) else bool(v)


def resolve_codebook_size(cfg: QuantizerConfig, n_items: int) -> int:
    k = cfg.codebook_size or default_codebook_size(n_items, cfg.levels)
    if k < 1:
        raise ValueError(f"codebook_size must be >= 1, got {k}")
    return k
