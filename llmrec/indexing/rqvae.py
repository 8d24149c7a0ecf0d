"""RQ-VAE quantizer (TIGER / LC-Rec / MiniOneRec style), behind the :class:`Quantizer` interface.

An MLP encoder maps an embedding to a latent vector; ``levels`` codebooks quantise it residually
(level ℓ quantises what levels < ℓ left over); an MLP decoder reconstructs the embedding from the
sum of the chosen codewords. The loss is reconstruction MSE plus, per level, the VQ-VAE codebook
loss ``||sg[r] - e||²`` and commitment loss ``β ||r - sg[e]||²``; gradients pass the quantiser by
the straight-through estimator. Codebooks start from k-means on the untrained encoder's latents
(LC-Rec), and a code unused for ``dead_code_steps`` optimiser steps is moved onto a random
residual of the current batch, which keeps codebook utilisation high.

Training is deterministic for a seed on CPU: weights are initialised inside
``torch.random.fork_rng`` (so the caller's global RNG is left as it was) and batches are drawn
from a private ``torch.Generator``; the model has no dropout.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llmrec.indexing.kmeans import kmeans, nearest_centroids, sq_distances
from llmrec.indexing.quantizer_base import (
    QuantizerConfig,
    StateDict,
    as_tensor,
    normalize_rows,
    resolve_codebook_size,
    state_flag,
    state_scalar,
)

logger = logging.getLogger(__name__)

__all__ = ["RQVAEQuantizer"]

# k-means codebook init sees at most this many latents: plenty for ≤ 256 codes per level.
_KMEANS_INIT_MAX_ROWS = 65536


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _RQVAE(nn.Module):
    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        latent_dim: int,
        levels: int,
        codebook_size: int,
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), input_dim])
        bound = 1.0 / codebook_size
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.empty(codebook_size, latent_dim).uniform_(-bound, bound))
            for _ in range(levels)
        )

    def quantize(
        self, z: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Residual VQ of ``z`` → (straight-through z_q, VQ loss, codes [n, L], residuals)."""
        residual = z
        z_q = torch.zeros_like(z)
        loss = z.new_zeros(())
        codes, residuals = [], []
        for book in self.codebooks:
            with torch.no_grad():
                idx, _ = nearest_centroids(residual.detach(), book.detach())
            e = book[idx]
            loss = loss + F.mse_loss(e, residual.detach()) + beta * F.mse_loss(residual, e.detach())
            e_st = residual + (e - residual).detach()  # straight-through estimator
            residuals.append(residual.detach())
            codes.append(idx)
            residual = residual - e_st
            z_q = z_q + e_st
        return z_q, loss, torch.stack(codes, 1), residuals


class RQVAEQuantizer:
    """Residual-quantised VAE over item embeddings; codes are the per-level codeword indices."""

    def __init__(self, cfg: QuantizerConfig) -> None:
        if cfg.levels < 1:
            raise ValueError(f"levels must be >= 1, got {cfg.levels}")
        self.cfg = cfg
        self.levels = cfg.levels
        self.codebook_size = cfg.codebook_size or 0
        self.model: _RQVAE | None = None
        self.history: list[dict[str, float]] = []  # per-epoch mean losses and code resets

    def _new_model(self, input_dim: int) -> _RQVAE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return _RQVAE(
                input_dim,
                self.cfg.hidden_dims,
                self.cfg.latent_dim,
                self.levels,
                self.codebook_size,
            )

    def _prepare(self, x: np.ndarray) -> torch.Tensor:
        xt = as_tensor(x)
        return normalize_rows(xt) if self.cfg.normalize else xt

    def _kmeans_init(self, model: _RQVAE, xt: torch.Tensor, gen: torch.Generator) -> None:
        n = xt.shape[0]
        rows = torch.randperm(n, generator=gen)[:_KMEANS_INIT_MAX_ROWS]
        with torch.no_grad():
            res = model.encoder(xt[torch.sort(rows).values])
            for level, book in enumerate(model.codebooks):
                c, labels = kmeans(
                    res,
                    self.codebook_size,
                    n_iter=self.cfg.kmeans_iters,
                    seed=self.cfg.seed + level,
                )
                book.copy_(c)
                res = res - c[labels]

    def fit(self, x: np.ndarray) -> Self:
        """Train encoder, codebooks and decoder on ``x`` with Adam."""
        cfg = self.cfg
        if cfg.balanced:
            logger.warning("rq_vae ignores balanced=True (only rq_kmeans supports it)")
        xt = self._prepare(x)
        n = xt.shape[0]
        self.codebook_size = resolve_codebook_size(cfg, n)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = self._new_model(xt.shape[1])
        if cfg.kmeans_init:
            self._kmeans_init(model, xt, gen)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        idle = torch.zeros(self.levels, self.codebook_size, dtype=torch.int64)
        self.history = []
        model.train()
        bar = tqdm(range(cfg.epochs), desc="rq_vae", disable=not cfg.progress)
        for epoch in bar:
            perm = torch.randperm(n, generator=gen)
            sums = torch.zeros(3, dtype=torch.float64)
            n_resets = 0
            for start in range(0, n, cfg.train_batch_size):
                xb = xt[perm[start : start + cfg.train_batch_size]]
                z_q, q_loss, codes, residuals = model.quantize(model.encoder(xb), cfg.beta)
                recon = F.mse_loss(model.decoder(z_q), xb)
                loss = recon + cfg.quant_weight * q_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += torch.tensor([loss.item(), recon.item(), q_loss.item()]) * xb.shape[0]
                if cfg.dead_code_steps > 0:
                    n_resets += self._reset_dead_codes(model, codes, residuals, idle, gen)
            mean = (sums / n).tolist()
            self.history.append(
                {
                    "epoch": epoch,
                    "loss": mean[0],
                    "recon": mean[1],
                    "quant": mean[2],
                    "dead_code_resets": n_resets,
                }
            )
            bar.set_postfix(loss=f"{mean[0]:.4g}", recon=f"{mean[1]:.4g}", resets=n_resets)
        model.eval()
        self.model = model
        if self.history:
            logger.info("rq_vae trained %d epochs, final %s", cfg.epochs, self.history[-1])
        return self

    def _reset_dead_codes(
        self,
        model: _RQVAE,
        codes: torch.Tensor,
        residuals: list[torch.Tensor],
        idle: torch.Tensor,
        gen: torch.Generator,
    ) -> int:
        """Move codes idle for ``dead_code_steps`` steps onto random residuals of this batch."""
        n_reset = 0
        for level, book in enumerate(model.codebooks):
            used = torch.bincount(codes[:, level], minlength=self.codebook_size) > 0
            idle[level] += 1
            idle[level][used] = 0
            dead = torch.nonzero(idle[level] >= self.cfg.dead_code_steps).squeeze(1)
            if dead.numel():
                rows = torch.randint(residuals[level].shape[0], (dead.numel(),), generator=gen)
                with torch.no_grad():
                    book[dead] = residuals[level][rows]
                idle[level][dead] = 0
                n_reset += dead.numel()
        return n_reset

    def _fitted(self) -> _RQVAE:
        if self.model is None:
            raise RuntimeError("quantizer is not fitted; call fit() or from_state_dict() first")
        return self.model

    def _latents(self, xt: torch.Tensor) -> torch.Tensor:
        model = self._fitted()
        bs = self.cfg.batch_size
        with torch.no_grad():
            parts = [model.encoder(xt[s : s + bs]) for s in range(0, xt.shape[0], bs)]
        return torch.cat(parts) if parts else xt.new_zeros((0, self.cfg.latent_dim))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Nearest codeword per level of the encoder's latents → int64 [N, levels]."""
        model = self._fitted()
        res = self._latents(self._prepare(x))
        codes = np.empty((res.shape[0], self.levels), dtype=np.int64)
        with torch.no_grad():
            for level, book in enumerate(model.codebooks):
                labels, _ = nearest_centroids(res, book.detach(), batch_size=self.cfg.batch_size)
                codes[:, level] = labels.numpy()
                res = res - book.detach()[labels]
        return codes

    def fit_encode(self, x: np.ndarray) -> np.ndarray:
        """Fit on ``x`` and return its codes."""
        return self.fit(x).encode(x)

    def last_level_distances(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Squared distances [n, K] from the last-level latent residual to the last codebook."""
        model = self._fitted()
        res = self._latents(self._prepare(x))
        prefix = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        with torch.no_grad():
            for level in range(self.levels - 1):
                res = res - model.codebooks[level].detach()[prefix[:, level]]
            return sq_distances(res, model.codebooks[-1].detach()).numpy()

    def state_dict(self) -> StateDict:
        """Settings plus every model tensor (encoder, codebooks, decoder) as numpy arrays."""
        model = self._fitted()
        d: StateDict = {
            "method": "rq_vae",
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "input_dim": model.input_dim,
            "latent_dim": self.cfg.latent_dim,
            "hidden_dims": np.asarray(self.cfg.hidden_dims, dtype=np.int64),
            "normalize": int(self.cfg.normalize),
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
        }
        for name, t in model.state_dict().items():
            d[f"model.{name}"] = t.detach().numpy().copy()
        return d

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`state_dict` (also after an ``np.savez`` round trip)."""
        if state_scalar(d, "method") != "rq_vae":
            raise ValueError(f"not an rq_vae state dict: method={state_scalar(d, 'method')!r}")
        cfg = QuantizerConfig(
            method="rq_vae",
            levels=int(state_scalar(d, "levels")),
            codebook_size=int(state_scalar(d, "codebook_size")),
            latent_dim=int(state_scalar(d, "latent_dim")),
            hidden_dims=tuple(int(h) for h in np.asarray(d["hidden_dims"]).reshape(-1)),
            normalize=state_flag(d, "normalize"),
            batch_size=int(state_scalar(d, "batch_size")),
            seed=int(state_scalar(d, "seed")),
            progress=False,
        )
        q = cls(cfg)
        model = q._new_model(int(state_scalar(d, "input_dim")))
        weights = {
            k.removeprefix("model."): torch.from_numpy(np.array(v, dtype=np.float32))
            for k, v in d.items()
            if k.startswith("model.")
        }
        model.load_state_dict(weights)
        model.eval()
        q.model = model
        return q
