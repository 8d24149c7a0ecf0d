"""``evaluate(recommender, split)``: the one evaluation path for every model and baseline.

Full ranking on the split's held-out cases: each case's history goes to the recommender, whose
top-K (K = the largest cutoff) is compared with the held-out item. Whether items from the
history are excluded is an explicit setting, recorded with the results (it changes the numbers a
lot: on ML-100K, Pop's NDCG@10 roughly doubles when seen items are excluded).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.split import Part, Split
from llmrec.eval.metrics import (
    bootstrap_ci,
    coverage_at,
    hit_at,
    invalid_share,
    mean_popularity,
    mrr_at,
    ndcg_at,
    ranks_from_lists,
)
from llmrec.io import write_json_atomic
from llmrec.recommend.base import Recommender


@dataclass
class EvalConfig:
    """How to evaluate."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 20], metadata={"help": "cutoffs K"})
    part: Part = field(default="test", metadata={"help": "valid or test cases"})
    max_users: int | None = field(
        default=None, metadata={"help": "evaluate a seeded sample of this many cases"}
    )
    bootstrap: int = field(default=1000, metadata={"help": "resamples for the 95% CIs (0: off)"})
    seed: int = field(default=0, metadata={"help": "case sampling, candidates and bootstrap"})
    candidates: int | None = field(
        default=None,
        metadata={
            "help": "rank a list of this many candidates per case (the target plus items the "
            "user never interacted with, seeded) instead of the full catalog (None)"
        },
    )


@dataclass
class EvalResult:
    """Per-user outcomes and the summary of one model under one protocol."""

    model: str
    per_user: pd.DataFrame
    metrics: dict[str, float]
    settings: dict[str, Any]
    seconds: float

    def row(self) -> dict[str, Any]:
        """One flat row for tables and JSON (model, settings, metrics)."""
        return {
            "model": self.model,
            "exclude_seen": self.settings["exclude_seen"],
            **self.metrics,
            "eval_seconds": round(self.seconds, 2),
        }

    def save(self, path: str | Path) -> None:
        """Write the summary as JSON (per-user rows go to a Parquet file beside it)."""
        path = Path(path)
        write_json_atomic(
            path,
            {
                "model": self.model,
                "settings": self.settings,
                "metrics": self.metrics,
                "seconds": self.seconds,
            },
        )
        self.per_user.to_parquet(path.with_suffix(".per_user.parquet"), index=False)


def popularity(split: Split) -> dict[str, float]:
    """Each item's share of training interactions."""
    counts = pd.Series([i for seq in split.table["train_items"] for i in seq]).value_counts()
    return {str(k): float(v) for k, v in (counts / counts.sum()).items()}


def sample_cases(cases: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """All cases, or a seeded sample of ``max_users`` of them (in their original order)."""
    if max_users is None or max_users >= len(cases):
        return cases
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(cases), size=max_users, replace=False))
    return cases.iloc[keep].reset_index(drop=True)


def candidate_lists(
    histories: Sequence[Sequence[str]],
    targets: Sequence[str],
    catalog: Sequence[str],
    n: int,
    seed: int,
) -> list[list[str]]:
    """Per case: the target and ``n - 1`` items sampled (seeded) from those the user never
    interacted with, in a seeded random order."""
    if n < 2:
        raise ValueError(f"candidates must be at least 2 (the target and one other), got {n}")
    pool = np.asarray(sorted(catalog))
    rng = np.random.default_rng(seed)
    out = []
    for history, target in zip(histories, targets, strict=True):
        seen = set(history) | {target}
        allowed = pool[~np.isin(pool, list(seen))]
        picked = rng.choice(allowed, size=min(n - 1, len(allowed)), replace=False).tolist()
        row = [target, *picked]
        rng.shuffle(row)
        out.append([str(i) for i in row])
    return out


def evaluate(
    recommender: Recommender,
    split: Split,
    config: EvalConfig | None = None,
    name: str | None = None,
    catalog: Sequence[str] | None = None,
    exclude_seen: bool = False,
) -> EvalResult:
    """Evaluate any ``Recommender`` on a split's held-out cases.

    ``exclude_seen`` forbids the items of each history. With ``config.candidates`` every other
    item outside the case's candidate list is excluded too, so any recommender ranks just
    the candidates.
    """
    cfg = config or EvalConfig()
    cases = sample_cases(split.cases(cfg.part), cfg.max_users, cfg.seed)
    histories = [list(h) for h in cases["history"]]
    targets = cases["target"].astype(str).tolist()
    if catalog is None:
        catalog = sorted({i for seq in split.table["train_items"] for i in seq} | set(targets))
    catalog_set = set(catalog)
    exclude: list[set[str]] | None = [set(h) for h in histories] if exclude_seen else None
    if cfg.candidates is not None:
        lists = candidate_lists(histories, targets, catalog, cfg.candidates, cfg.seed)
        exclude = [
            (catalog_set - set(c)) | (set(h) if exclude_seen else set())
            for c, h in zip(lists, histories, strict=True)
        ]
    k_max = min(max(cfg.ks), cfg.candidates or max(cfg.ks))
    users = cases["user_id"].astype(str).tolist()
    start = time.perf_counter()
    recommended, _ = recommender.recommend(histories, k_max, exclude, users)
    seconds = time.perf_counter() - start
    recommended = [row + [""] * (max(cfg.ks) - len(row)) for row in recommended]
    ranks = ranks_from_lists(recommended, targets)
    pop = popularity(split)
    per_user = pd.DataFrame(
        {"user_id": cases["user_id"].astype(str), "target": targets, "rank": ranks}
    )
    metrics: dict[str, float] = {}
    for k in cfg.ks:
        for metric, fn in (("recall", hit_at), ("ndcg", ndcg_at), ("mrr", mrr_at)):
            values = fn(ranks, k)
            per_user[f"{metric}@{k}"] = values
            metrics[f"{metric}@{k}"] = float(values.mean())
            if cfg.bootstrap:
                low, high = bootstrap_ci(values, cfg.bootstrap, seed=cfg.seed)
                metrics[f"{metric}@{k}_ci_low"], metrics[f"{metric}@{k}_ci_high"] = low, high
        metrics[f"coverage@{k}"] = coverage_at(recommended, k, len(catalog_set))
        metrics[f"invalid@{k}"] = invalid_share(recommended, k, catalog_set)
        metrics[f"popularity@{k}"] = mean_popularity(recommended, k, pop)
    settings = {
        "part": cfg.part,
        "exclude_seen": exclude_seen,
        "candidates": cfg.candidates,
        "ks": list(cfg.ks),
        "n_cases": len(cases),
        "max_users": cfg.max_users,
        "seed": cfg.seed,
        "split": split.method,
    }
    return EvalResult(name or type(recommender).__name__, per_user, metrics, settings, seconds)
