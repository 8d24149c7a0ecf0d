"""Quantizers that turn item embeddings [N, D] into code tuples [N, levels].

Two methods share one interface (:class:`Quantizer`), chosen by name in :func:`build_quantizer`:

* ``rq_kmeans`` — residual k-means: level ℓ clusters what is left after subtracting the centroids
  chosen at levels < ℓ (as in OneRec / MiniOneRec's RQ-KMeans). For large catalogs each level is
  fitted on a seeded subsample and all items are then assigned in batches (what faiss users do):
  centroids from 200k points are as good as from 1M, at a fifth of the cost.
* ``rq_vae`` — MLP encoder → residual vector quantisation → MLP decoder, trained with
  reconstruction MSE + codebook/commitment losses and a straight-through estimator, k-means
  codebook init and dead-code reset (as in TIGER / LC-Rec / MiniOneRec); see ``rqvae.py``.

``encode`` is row-independent (an item's code never depends on the other rows passed with it),
so new items can be encoded later from ``state_dict`` alone. ``fit_encode`` returns the training
items' codes; it differs from ``fit(x).encode(x)`` only in balanced mode, where it applies the
capacity-constrained assignment level by level.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self

import numpy as np
import torch

from llmrec.indexing.kmeans import balanced_assign, kmeans, nearest_centroids, sq_distances

logger = logging.getLogger(__name__)

__all__ = [
    "Quantizer",
    "QuantizerConfig",
    "RQKMeansQuantizer",
    "StateDict",
    "build_quantizer",
    "default_codebook_size",
    "make_distance_fn",
    "quantizer_from_state_dict",
]

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


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """float32 tensor view of ``x`` (no copy when ``x`` is already contiguous float32)."""
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array [N, D], got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def _scalar(d: Mapping[str, Any], key: str) -> Any:
    """A scalar from a state dict, also when it went through ``np.savez`` (0-d array)."""
    v = d[key]
    return v.item() if isinstance(v, np.ndarray | np.generic) else v


def _flag(d: Mapping[str, Any], key: str) -> bool:
    """A boolean from a state dict, whether stored as bool, int or string."""
    v = _scalar(d, key)
    return v.strip().lower() in ("1", "true", "yes") if isinstance(v, str) else bool(v)


def _resolve_codebook_size(cfg: QuantizerConfig, n_items: int) -> int:
    k = cfg.codebook_size or default_codebook_size(n_items, cfg.levels)
    if k < 1:
        raise ValueError(f"codebook_size must be >= 1, got {k}")
    return k


class RQKMeansQuantizer:
    """Residual k-means: one k-means codebook per level, fitted on the previous residuals."""

    def __init__(self, cfg: QuantizerConfig) -> None:
        if cfg.levels < 1:
            raise ValueError(f"levels must be >= 1, got {cfg.levels}")
        self.cfg = cfg
        self.levels = cfg.levels
        self.codebook_size = cfg.codebook_size or 0  # fixed by fit when left to the default
        self.codebooks: list[torch.Tensor] = []

    def _check_fitted(self) -> None:
        if not self.codebooks:
            raise RuntimeError("quantizer is not fitted; call fit() or from_state_dict() first")

    def fit(self, x: np.ndarray) -> Self:
        """Fit one k-means per level on (a seeded subsample of) ``x``'s residuals."""
        cfg = self.cfg
        xt = _as_tensor(x)
        n = xt.shape[0]
        self.codebook_size = _resolve_codebook_size(cfg, n)
        gen = torch.Generator().manual_seed(cfg.seed)
        if 0 < cfg.kmeans_sample < n:
            idx = torch.sort(torch.randperm(n, generator=gen)[: cfg.kmeans_sample]).values
            res = xt[idx]  # fancy indexing copies, so the caller's array is never modified
        else:
            res = xt.clone()
        if cfg.normalize:
            res = _normalize(res)
        self.codebooks = []
        for level in range(self.levels):
            c, labels = kmeans(
                res,
                self.codebook_size,
                n_iter=cfg.kmeans_iters,
                seed=cfg.seed + level,
                balanced=cfg.balanced,
                batch_size=cfg.batch_size,
            )
            self.codebooks.append(c)
            res -= c[labels]
            logger.info(
                "rq_kmeans level %d: k=%d, residual mse %.4g",
                level,
                self.codebook_size,
                float(res.pow(2).sum(1).mean()),
            )
        return self

    def _encode_tensor(self, xt: torch.Tensor, balanced: bool) -> np.ndarray:
        n = xt.shape[0]
        codes = np.empty((n, self.levels), dtype=np.int64)
        # Balanced assignment needs every row at once; nearest-code assignment goes by batch so
        # that encoding 1M items never holds more than one batch of residuals.
        step = max(n, 1) if balanced else self.cfg.batch_size
        for start in range(0, max(n, 1), step):
            res = xt[start : start + step].clone()
            if self.cfg.normalize:
                res = _normalize(res)
            for level, c in enumerate(self.codebooks):
                if balanced:
                    labels, _ = balanced_assign(res, c, batch_size=self.cfg.batch_size)
                else:
                    labels, _ = nearest_centroids(res, c, batch_size=self.cfg.batch_size)
                codes[start : start + step, level] = labels.numpy()
                res -= c[labels]
        return codes

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Nearest-centroid code per level → int64 [N, levels]."""
        self._check_fitted()
        return self._encode_tensor(_as_tensor(x), balanced=False)

    def fit_encode(self, x: np.ndarray) -> np.ndarray:
        """Fit, then return the codes of ``x`` (capacity-constrained when ``balanced``)."""
        self.fit(x)
        return self._encode_tensor(_as_tensor(x), balanced=self.cfg.balanced)

    def last_level_distances(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Squared distances [n, K] from the last-level residual to the last codebook."""
        self._check_fitted()
        res = _as_tensor(x).clone()
        if self.cfg.normalize:
            res = _normalize(res)
        prefix = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        for level in range(self.levels - 1):
            res -= self.codebooks[level][prefix[:, level]]
        return sq_distances(res, self.codebooks[-1]).numpy()

    def state_dict(self) -> StateDict:
        """Codebooks and the settings that affect encoding."""
        self._check_fitted()
        d: StateDict = {
            "method": "rq_kmeans",
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "normalize": int(self.cfg.normalize),
            "balanced": int(self.cfg.balanced),
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
        }
        for level, c in enumerate(self.codebooks):
            d[f"codebook.{level}"] = c.numpy().copy()
        return d

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state_dict` (also after an ``np.savez`` round trip)."""
        if _scalar(d, "method") != "rq_kmeans":
            raise ValueError(f"not an rq_kmeans state dict: method={_scalar(d, 'method')!r}")
        cfg = QuantizerConfig(
            method="rq_kmeans",
            levels=int(_scalar(d, "levels")),
            codebook_size=int(_scalar(d, "codebook_size")),
            normalize=_flag(d, "normalize"),
            balanced=_flag(d, "balanced"),
            batch_size=int(_scalar(d, "batch_size")),
            seed=int(_scalar(d, "seed")),
        )
        q = cls(cfg)
        q.codebooks = [
            torch.from_numpy(np.array(d[f"codebook.{i}"], dtype=np.float32))
            for i in range(cfg.levels)
        ]
        return q


def build_quantizer(name: str, cfg: QuantizerConfig) -> Quantizer:
    """An unfitted quantizer by name: ``"rq_kmeans"`` or ``"rq_vae"``."""
    if name == "rq_kmeans":
        return RQKMeansQuantizer(cfg)
    if name == "rq_vae":
        from llmrec.indexing.rqvae import RQVAEQuantizer

        return RQVAEQuantizer(cfg)
    raise ValueError(f"unknown quantizer {name!r}; expected 'rq_kmeans' or 'rq_vae'")


def quantizer_from_state_dict(d: Mapping[str, Any]) -> Quantizer:
    """Rebuild whichever quantizer produced ``d`` (dispatches on ``d["method"]``)."""
    method = _scalar(d, "method")
    if method == "rq_kmeans":
        return RQKMeansQuantizer.from_state_dict(d)
    if method == "rq_vae":
        from llmrec.indexing.rqvae import RQVAEQuantizer

        return RQVAEQuantizer.from_state_dict(d)
    raise ValueError(f"unknown quantizer method {method!r} in state dict")


def make_distance_fn(
    quantizer: Quantizer, x: np.ndarray, codes: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Distance callback for :func:`~llmrec.indexing.collisions.resolve_collisions`.

    Maps item indices → squared distances [m, K] to the last-level codewords, computed only for
    the items asked about (the colliding ones), never for the whole catalog.
    """
    original = np.array(codes, dtype=np.int64)  # prefixes must not follow later edits

    def distance_fn(idx: np.ndarray) -> np.ndarray:
        return quantizer.last_level_distances(x[idx], original[idx])

    return distance_fn
