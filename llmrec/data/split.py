"""Chronological splits: per-user leave-one-out and a global temporal ratio split.

Sorting is always stable, so interactions with equal timestamps keep the source file's order.
Histories are stored whole; truncation to a model's history length happens where a model
consumes them. Both splits produce one row per user:

* leave-one-out: ``user_id``, ``train_items`` (list, chronological), ``valid_item``,
  ``test_item`` — the last item is the test target, the second-to-last the validation target.
* temporal: ``user_id``, ``train_items``, ``valid_items``, ``test_items`` — interactions are cut
  at the global positions given by the ratios (e.g. 8:1:1) in time order.

Everything is vectorised (numpy sort + arrow list arrays), never a Python loop per interaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmrec.data.filters import codes_of
from llmrec.data.schema import DataError
from llmrec.io import write_parquet_atomic

SplitMethod = Literal["leave_one_out", "temporal"]
HistoryRule = Literal["all", "test", "valid"]
Part = Literal["valid", "test"]


@dataclass
class SplitConfig:
    """How to split interactions into train / validation / test."""

    method: SplitMethod = field(
        default="leave_one_out",
        metadata={
            "help": "leave_one_out (per user: last → test, second-to-last → valid) or "
            "temporal (global cut by time, see ratios)"
        },
    )
    ratios: list[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        metadata={
            "help": "temporal split: train/valid/test shares of all interactions",
            "min": 0,
            "min_items": 3,
        },
    )


@dataclass(frozen=True)
class Split:
    """One row per user: chronological train history and held-out item(s)."""

    method: SplitMethod
    table: pd.DataFrame
    dropped_users: int = 0

    @property
    def n_users(self) -> int:
        """Users with a row in the split."""
        return len(self.table)

    def cases(self, part: Part) -> pd.DataFrame:
        """Evaluation cases ``user_id, history, target`` for ``valid`` or ``test``.

        The history is every interaction before the target (train, then earlier valid/test
        items), so no case ever sees its own target or anything after it.
        """
        users = self.table["user_id"].tolist()
        train = self.table["train_items"].tolist()
        rows: list[tuple[str, list[str], str]] = []
        if self.method == "leave_one_out":
            valid = self.table["valid_item"].tolist()
            if part == "valid":
                rows = list(zip(users, train, valid, strict=True))
            else:
                test = self.table["test_item"].tolist()
                rows = [
                    (u, [*h, v], t) for u, h, v, t in zip(users, train, valid, test, strict=True)
                ]
        else:
            valid = self.table["valid_items"].tolist()
            test = self.table["test_items"].tolist()
            for u, h, vs, ts in zip(users, train, valid, test, strict=True):
                before = h if part == "valid" else h + vs
                targets = vs if part == "valid" else ts
                for i, target in enumerate(targets):
                    if before or i:  # a case needs at least one earlier interaction
                        rows.append((u, before + targets[:i], target))
        return pd.DataFrame(rows, columns=["user_id", "history", "target"])

    def histories(self, rule: HistoryRule = "all") -> dict[str, tuple[list[str], str | None]]:
        """Each user's history under ``rule`` and their first held-out test item.

        ``all``: every interaction of the user (what serving uses: all we know); ``test``: the
        interactions before the first test item (what evaluation scores); ``valid``: before the
        validation item. The held-out item is the first test target (None without one).
        """
        test = self.cases("test").drop_duplicates("user_id", keep="first")
        held = dict(zip(test["user_id"].astype(str), test["target"].astype(str), strict=True))
        if rule in ("test", "valid"):
            cases = self.cases(rule).drop_duplicates("user_id", keep="first")
            return {
                str(u): ([str(i) for i in h], held.get(str(u)))
                for u, h in zip(cases["user_id"], cases["history"], strict=True)
            }
        out: dict[str, tuple[list[str], str | None]] = {}
        for row in self.table.to_dict("records"):
            user = str(row["user_id"])
            items = [str(i) for i in row["train_items"]]
            for column in ("valid_item", "test_item"):
                if row.get(column) is not None and not pd.isna(row[column]):
                    items.append(str(row[column]))
            for column in ("valid_items", "test_items"):
                if column in row and row[column] is not None:
                    items += [str(i) for i in row[column]]
            out[user] = (items, held.get(user))
        return out

    def save(self, path: str | Path) -> None:
        """Write ``split.parquet`` atomically."""
        write_parquet_atomic(path, self.table)

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a ``split.parquet`` written by ``save`` (or by anyone with the same columns)."""
        table = pq.read_table(path)
        frame = table.to_pandas(
            types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None
        )
        if "valid_item" in frame.columns:
            return cls("leave_one_out", frame)
        if "valid_items" in frame.columns:
            return cls("temporal", frame)
        raise DataError("not a split file (no valid_item/valid_items column)", file=str(path))


def _user_sorted(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Events ordered by (first-seen user, time), stable; returns order, user codes, user ids."""
    users, _ = codes_of(events["user_id"])
    order = np.lexsort((events["timestamp"].to_numpy(), users))  # lexsort is stable
    return order, users[order], events["user_id"]


def _list_column(values: pa.Array, lengths: np.ndarray) -> pd.Series:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    arr = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pd.Series(arr.cast(pa.list_(pa.string())), dtype=pd.ArrowDtype(pa.list_(pa.string())))


def leave_one_out(events: pd.DataFrame, min_interactions: int = 3) -> Split:
    """Per user, last item → test, second-to-last → validation, the rest → train.

    Users with fewer than ``min_interactions`` (at least 3) cannot give all three parts and are
    left out; ``Split.dropped_users`` counts them.
    """
    min_interactions = max(3, min_interactions)
    order, users_sorted, user_ids = _user_sorted(events)
    n_users = int(users_sorted.max()) + 1 if len(users_sorted) else 0
    counts = np.bincount(users_sorted, minlength=n_users)
    starts = np.zeros(n_users, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    kept = counts >= min_interactions
    if not kept.any():
        raise DataError(
            f"no user has {min_interactions} interactions; split.method=leave_one_out needs them"
        )
    items_sorted = pa.array(events["item_id"].to_numpy(dtype=object), pa.string()).take(
        pa.array(order)
    )
    position = np.arange(len(order)) - starts[users_sorted]
    in_train = kept[users_sorted] & (position < counts[users_sorted] - 2)
    first_rows = starts[kept]
    user_col = user_ids.to_numpy(dtype=object)[order[first_rows]]
    last = starts[kept] + counts[kept] - 1
    table = pd.DataFrame(
        {
            "user_id": pd.Series(user_col, dtype="str"),
            "train_items": _list_column(items_sorted.filter(pa.array(in_train)), counts[kept] - 2),
            "valid_item": pd.Series(items_sorted.take(pa.array(last - 1)).to_pylist(), dtype="str"),
            "test_item": pd.Series(items_sorted.take(pa.array(last)).to_pylist(), dtype="str"),
        }
    )
    return Split("leave_one_out", table, dropped_users=int((~kept).sum()))


def temporal_split(events: pd.DataFrame, ratios: list[float] | tuple[float, ...]) -> Split:
    """Cut all interactions by time at the ratios' positions; one row per user with each part."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataError(
            f"must be three non-negative numbers, not all 0; got {list(ratios)}",
            field="split.ratios",
        )
    shares = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
    n = len(events)
    time_rank = np.empty(n, dtype=np.int64)
    time_rank[np.argsort(events["timestamp"].to_numpy(), kind="stable")] = np.arange(n)
    cut1, cut2 = round(float(n * shares[0])), round(float(n * (shares[0] + shares[1])))
    part = np.where(time_rank < cut1, 0, np.where(time_rank < cut2, 1, 2))

    order, users_sorted, user_ids = _user_sorted(events)
    n_users = int(users_sorted.max()) + 1
    items_sorted = pa.array(events["item_id"].to_numpy(dtype=object), pa.string()).take(
        pa.array(order)
    )
    part_sorted = part[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users_sorted)) + 1]
    columns = {}
    for p, name in enumerate(("train_items", "valid_items", "test_items")):
        mask = part_sorted == p
        lengths = np.bincount(users_sorted[mask], minlength=n_users)
        columns[name] = _list_column(items_sorted.filter(pa.array(mask)), lengths)
    user_col = user_ids.to_numpy(dtype=object)[order[starts]]
    table = pd.DataFrame({"user_id": pd.Series(user_col, dtype="str"), **columns})
    return Split("temporal", table)


def make_split(events: pd.DataFrame, config: SplitConfig) -> Split:
    """Split events as configured."""
    if config.method == "leave_one_out":
        return leave_one_out(events)
    return temporal_split(events, config.ratios)
