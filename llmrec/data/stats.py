"""Dataset statistics: counts, sparsity, sequence-length percentiles, split sizes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.filters import FilterReport, codes_of
from llmrec.data.split import Split

PERCENTILES = (5, 25, 50, 75, 95, 99)


def interaction_stats(events: pd.DataFrame) -> dict[str, Any]:
    """Users, items, interactions, density and per-user sequence-length percentiles."""
    users, n_users = codes_of(events["user_id"])
    n_items = int(events["item_id"].nunique())
    lengths = np.bincount(users, minlength=n_users)
    ts = events["timestamp"].to_numpy()
    stats: dict[str, Any] = {
        "users": int(n_users),
        "items": n_items,
        "interactions": len(events),
        "density": len(events) / float(n_users * n_items) if n_users and n_items else 0.0,
        "sequence_length": {
            "min": int(lengths.min()),
            "mean": round(float(lengths.mean()), 3),
            "max": int(lengths.max()),
            **{f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES},
        },
        "timestamp": {"min": ts.min().item(), "max": ts.max().item()},
    }
    if "rating" in events.columns:
        ratings = events["rating"].to_numpy()
        stats["rating"] = {
            "min": float(ratings.min()),
            "mean": round(float(ratings.mean()), 4),
            "max": float(ratings.max()),
        }
    return stats


def split_stats(split: Split) -> dict[str, Any]:
    """Sizes of a split's parts."""
    train_len = split.table["train_items"].list.len().to_numpy()
    out: dict[str, Any] = {
        "method": split.method,
        "users": split.n_users,
        "dropped_users": split.dropped_users,
        "train_interactions": int(train_len.sum()),
    }
    if split.method == "leave_one_out":
        out["valid_cases"] = out["test_cases"] = split.n_users
    else:
        out["valid_interactions"] = int(split.table["valid_items"].list.len().sum())
        out["test_interactions"] = int(split.table["test_items"].list.len().sum())
    return out


def dataset_stats(
    name: str,
    events: pd.DataFrame,
    split: Split,
    reports: list[FilterReport],
    raw_interactions: int,
) -> dict[str, Any]:
    """Everything ``stats.json`` holds."""
    return {
        "dataset": name,
        **interaction_stats(events),
        "raw_interactions": raw_interactions,
        "filters": [r.as_dict() for r in reports],
        "split": split_stats(split),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A readable summary of ``dataset_stats`` output."""
    seq = stats["sequence_length"]
    lines = [
        f"Dataset {stats['dataset']}",
        f"  users         {stats['users']:>12,}",
        f"  items         {stats['items']:>12,}",
        f"  interactions  {stats['interactions']:>12,}",
        f"  density       {stats['density']:>12.4%}",
        "  sequence length per user: "
        + ", ".join(f"{k} {seq[k]:g}" for k in ("min", "p25", "p50", "mean", "p95", "max")),
    ]
    for rep in stats.get("filters", []):
        lines.append(
            f"  filter {rep['name']}: removed {rep['removed_interactions']:,} interactions, "
            f"{rep['removed_users']:,} users, {rep['removed_items']:,} items"
        )
    split = stats.get("split")
    if split:
        text = (
            f"  split {split['method']}: {split['users']:,} users, "
            f"{split['train_interactions']:,} train interactions"
        )
        if split["method"] == "leave_one_out":
            text += f", {split['valid_cases']:,} valid / {split['test_cases']:,} test cases"
        else:
            text += (
                f", {split['valid_interactions']:,} valid / "
                f"{split['test_interactions']:,} test interactions"
            )
        if split["dropped_users"]:
            text += f" ({split['dropped_users']:,} users with < 3 interactions left out)"
        lines.append(text)
    return "\n".join(lines)
