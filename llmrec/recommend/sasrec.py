"""SASRec's network and a scorer that reads a saved SASRec model: the part of the baseline that
other stages use without its training (the collaborative reward of GRPO reads SASRec's scores
through ``SASRecScorer``; ``llmrec.eval.sasrec`` trains, evaluates and saves the model).

Kang & McAuley (2018): item + position embeddings, causal pre-LN Transformer blocks, logits tied
to the item embedding (score = h · E_item). Item index 0 is padding; histories are left-padded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

PAD = 0  # item index 0 is padding; real items are 1..n


class SASRecShape(Protocol):
    """The sizes ``SASRecModel`` is built from (``SASRecConfig`` has them)."""

    @property
    def max_len(self) -> int: ...
    @property
    def hidden(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def heads(self) -> int: ...
    @property
    def dropout(self) -> float: ...


class _Block(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN x), then x + FFN(LN x)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        # No dropout on attention weights: on CPU it makes SDPA ~10x slower for little gain.
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRecModel(nn.Module):
    """Item + position embeddings, causal pre-LN blocks, logits tied to the item embedding."""

    def __init__(self, n_items: int, cfg: SASRecShape) -> None:
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
        self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=PAD)
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            _Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.ln = nn.LayerNorm(cfg.hidden)
        # Small init as in BERT/RecBole: the tied output layer starts near uniform logits.
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.items.weight[PAD].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, H] for left-padded item indices [B, L]."""
        n = seq.shape[1]
        real = seq != PAD
        pos = torch.arange(n, device=seq.device)
        x = self.drop(self.items(seq) + self.positions(pos)[None]) * real[..., None]
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        # A position sees earlier real items and itself (padding rows too, so no row is empty).
        mask = (causal[None] & real[:, None, :]) | torch.eye(n, dtype=torch.bool, device=seq.device)
        mask = mask[:, None]  # [B, 1, L, L], broadcast over heads
        for block in self.blocks:
            x = block(x, mask) * real[..., None]
        return self.ln(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over real items 1..n (column j is item index j + 1)."""
        return hidden @ self.items.weight[1:].T


def encode_histories(seqs: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """Left-pad (or cut to the last ``length``) index sequences into a [n, length] tensor."""
    out = torch.zeros(len(seqs), length, dtype=torch.long)
    for r, seq in enumerate(seqs):
        tail = list(seq)[-length:]
        if tail:
            out[r, length - len(tail) :] = torch.tensor(tail, dtype=torch.long)
    return out


@dataclass(frozen=True)
class SASRecArch:
    """The network sizes of a saved SASRec model (its ``config.json``)."""

    max_len: int
    hidden: int
    blocks: int
    heads: int
    dropout: float


@dataclass
class SASRecScorer:
    """A saved SASRec model (``SASRecRecommender.save``'s folder) that scores every item."""

    model: SASRecModel
    items: list[str]
    max_len: int
    batch_size: int = 256

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> SASRecScorer:
        """Read ``config.json``, ``items.json`` and ``model.safetensors`` from ``folder``."""
        folder = Path(folder)
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        arch = SASRecArch(**{k: raw[k] for k in SASRecArch.__dataclass_fields__})
        items = [str(i) for i in json.loads((folder / "items.json").read_text(encoding="utf-8"))]
        model = SASRecModel(len(items), arch)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return cls(model.to(device).eval(), items, arch.max_len)

    @property
    def index(self) -> dict[str, int]:
        """Item id → column of ``score``."""
        return {item: j for j, item in enumerate(self.items)}

    @torch.inference_mode()
    def score(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores [n_histories, n_items] (columns in ``items`` order); unknown items skipped."""
        rows = {item: j + 1 for j, item in enumerate(self.items)}
        device = next(self.model.parameters()).device
        out = np.empty((len(histories), len(self.items)), dtype=np.float64)
        for start in range(0, len(histories), self.batch_size):
            seqs = [
                [rows[i] for i in h if i in rows]
                for h in histories[start : start + self.batch_size]
            ]
            hidden = self.model(encode_histories(seqs, self.max_len).to(device))[:, -1]
            out[start : start + len(seqs)] = self.model.logits(hidden).double().cpu().numpy()
        return out
