"""SASRec: a compact self-attentive sequential recommender, the classic ID-based baseline.

Kang & McAuley (2018) with the now-standard full-softmax cross-entropy over all items instead of
sampled negatives. Trained on ``split.table["train_items"]`` only and model-selected by
``eval.evaluate`` on the validation cases, so its numbers come from the same code path as every
other recommender. Pre-LN causal Transformer blocks; the output layer is tied to the item
embedding (score = h · E_item). The network itself (``SASRecModel``) lives in
``llmrec.recommend.sasrec``, where training stages can read a saved model's scores (GRPO's
collaborative reward) without importing evaluation.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from llmrec.config import from_dict, to_dict
from llmrec.data.split import Split
from llmrec.eval.metrics import top_k
from llmrec.eval.protocol import EvalConfig, evaluate
from llmrec.io import atomic_path, write_json_atomic
from llmrec.recommend.base import Users
from llmrec.recommend.sasrec import SASRecModel, encode_histories

logger = logging.getLogger(__name__)


@dataclass
class SASRecConfig:
    """SASRec model size, training schedule and early stopping."""

    max_len: int = field(default=50, metadata={"help": "history length the model sees"})
    hidden: int = field(default=64, metadata={"help": "embedding and hidden size"})
    blocks: int = field(default=2, metadata={"help": "Transformer blocks"})
    heads: int = field(default=1, metadata={"help": "attention heads"})
    dropout: float = field(default=0.2, metadata={"help": "dropout on embeddings and blocks"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=128, metadata={"help": "training sequences per step"})
    eval_batch_size: int = field(default=256, metadata={"help": "histories per forward pass"})
    max_epochs: int = field(default=200, metadata={"help": "upper bound on training epochs"})
    patience: int = field(
        # 20, not 10: val NDCG@10 on ~1k users is noisy, and SASRec often improves after a dip.
        default=20,
        metadata={"help": "stop after this many evaluations without a better val NDCG@10"},
    )
    eval_every: int = field(default=1, metadata={"help": "validate every this many epochs"})
    seed: int = field(default=0, metadata={"help": "init, dropout, shuffling, tie-breaks"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if present), cpu, cuda…"})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads while training (None: leave as is)"}
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SASRecRecommender:
    """A trained SASRec behind the ``Recommender`` protocol."""

    def __init__(self, model: SASRecModel, items: Sequence[str], cfg: SASRecConfig) -> None:
        self.model, self.items, self.cfg = model, list(items), cfg
        # The one item-id ↔ index mapping: item ``items[j]`` has embedding row j + 1.
        self.index = {item: j + 1 for j, item in enumerate(self.items)}

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device

    def score(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores [n_users, n_items] over ``self.items``; unknown history items are skipped."""
        was_training = self.model.training
        self.model.eval()
        out = np.empty((len(histories), len(self.items)), dtype=np.float64)
        bs = self.cfg.eval_batch_size
        with torch.inference_mode():
            for start in range(0, len(histories), bs):
                rows = [
                    [self.index[i] for i in h if i in self.index]
                    for h in histories[start : start + bs]
                ]
                seq = encode_histories(rows, self.cfg.max_len).to(self.device)
                hidden = self.model(seq)[:, -1]  # left padding: the last position is the newest
                out[start : start + len(rows)] = self.model.logits(hidden).double().cpu().numpy()
        self.model.train(was_training)
        return out

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k items per user by model score, excluded items never returned."""
        scores = self.score(histories)
        if exclude is not None:
            for u, banned in enumerate(exclude):
                cols = [self.index[i] - 1 for i in banned if i in self.index]
                scores[u, cols] = -np.inf
        idx, vals = top_k(scores, k, self.cfg.seed)
        items = [
            [self.items[i] if np.isfinite(v) else "" for i, v in zip(row, vrow, strict=True)]
            for row, vrow in zip(idx, vals, strict=True)
        ]
        return items, vals

    def save(self, folder: str | Path) -> None:
        """Write weights (safetensors), config and item vocabulary, each file atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "config.json", to_dict(self.cfg))
        write_json_atomic(folder / "items.json", self.items)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp))

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> SASRecRecommender:
        """Read a folder written by ``save`` (onto ``device``, default the config's)."""
        folder = Path(folder)
        cfg = from_dict(SASRecConfig, json.loads((folder / "config.json").read_text()))
        items = [str(i) for i in json.loads((folder / "items.json").read_text())]
        model = SASRecModel(len(items), cfg)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.to(resolve_device(device or cfg.device)).eval()
        return cls(model, items, cfg)


def _training_tensors(
    split: Split, index: dict[str, int], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item targets [n_users, max_len] from each user's last max_len+1 items."""
    seqs = [[index[i] for i in seq][-(max_len + 1) :] for seq in split.table["train_items"]]
    seqs = [s for s in seqs if len(s) >= 2]  # one item predicts nothing
    inputs = encode_histories([s[:-1] for s in seqs], max_len)
    targets = (
        encode_histories([s[1:] for s in seqs], max_len) - 1
    )  # column of the item; padding → -1
    return inputs, targets


def train_sasrec(
    split: Split, cfg: SASRecConfig | None = None, progress: bool = True
) -> tuple[SASRecRecommender, list[dict[str, Any]]]:
    """Train on the training items, early-stop on validation NDCG@10, return the best model."""
    cfg = cfg or SASRecConfig()
    old_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        # fork_rng: seeding for init/dropout leaves the caller's global torch RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _train(split, cfg, progress)
    finally:
        torch.set_num_threads(old_threads)


def _train(
    split: Split, cfg: SASRecConfig, progress: bool
) -> tuple[SASRecRecommender, list[dict[str, Any]]]:
    device = resolve_device(cfg.device)
    items = sorted({i for seq in split.table["train_items"] for i in seq})
    model = SASRecModel(len(items), cfg).to(device)
    rec = SASRecRecommender(model, items, cfg)
    inputs, targets = _training_tensors(split, rec.index, cfg.max_len)
    logger.info(
        "SASRec: %d items, %d training sequences, %d targets, %d parameters on %s",
        len(items),
        len(inputs),
        int((targets >= 0).sum()),
        sum(p.numel() for p in model.parameters()),
        device,
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    shuffle = torch.Generator().manual_seed(cfg.seed)
    val_cfg = EvalConfig(ks=[10], part="valid", bootstrap=0)
    history: list[dict[str, Any]] = []
    best, best_epoch, best_state, stale = -math.inf, 0, copy.deepcopy(model.state_dict()), 0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc="SASRec", disable=not progress)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for batch in torch.randperm(len(inputs), generator=shuffle).split(cfg.batch_size):
            x, y = inputs[batch].to(device), targets[batch].to(device)
            keep = y >= 0  # padding positions carry no target
            logits = model.logits(model(x)[keep])
            loss = F.cross_entropy(logits, y[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * int(keep.sum()), count + int(keep.sum())
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {
            "epoch": epoch,
            "loss": total / max(count, 1),
            "val_ndcg@10": None,
            "seconds": seconds,
        }
        # Always validate the final epoch, so the budget never discards unjudged training. The
        # budget is counted in epochs, never seconds: a result must not depend on the machine.
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            ndcg = evaluate(rec, split, val_cfg, name="SASRec").metrics["ndcg@10"]
            row["val_ndcg@10"], row["seconds"] = ndcg, time.perf_counter() - start
            if ndcg > best:
                best, best_epoch, stale = ndcg, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.set_postfix(
                loss=f"{row['loss']:.3f}", val_ndcg=f"{ndcg:.4f}", best=f"{best:.4f}@{best_epoch}"
            )
        history.append(row)
        if stale >= cfg.patience:
            logger.info(
                "SASRec: no better val NDCG@10 for %d evaluations; stopping at epoch %d",
                stale,
                epoch,
            )
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    logger.info(
        "SASRec: best val NDCG@10 %.4f at epoch %d (%.0f s)",
        best,
        best_epoch,
        time.perf_counter() - start,
    )
    return rec, history
