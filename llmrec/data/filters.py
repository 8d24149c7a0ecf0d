"""Interaction filters: rating threshold, duplicate removal, k-core. Each reports what it removed.

All are pure functions ``events -> (events, FilterReport)`` working on integer codes with numpy,
never a Python loop per interaction. They are all off unless configured.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from llmrec.data.schema import DataError

logger = logging.getLogger(__name__)

DedupMode = Literal["none", "exact", "first", "last"]


@dataclass
class FilterConfig:
    """Which filters to apply (all off by default), in the order listed."""

    min_rating: float | None = field(
        default=None, metadata={"help": "keep interactions rated at least this (null: off)"}
    )
    dedup: DedupMode = field(
        default="none",
        metadata={
            "help": "duplicates: none | exact (same user, item, time) | first / last "
            "(keep one interaction per user-item pair, the earliest / latest)"
        },
    )
    min_user_interactions: int = field(
        default=0,
        metadata={"help": "k-core: users need at least this many interactions", "min": 0},
    )
    min_item_interactions: int = field(
        default=0,
        metadata={"help": "k-core: items need at least this many interactions", "min": 0},
    )


@dataclass(frozen=True)
class FilterReport:
    """What one filter removed."""

    name: str
    removed_interactions: int
    removed_users: int
    removed_items: int
    remaining_interactions: int

    def as_dict(self) -> dict[str, int | str]:
        """Plain data for JSON."""
        return asdict(self)


def codes_of(values: pd.Series) -> tuple[np.ndarray, int]:
    """Dense integer codes (first-appearance order) and how many distinct values there are."""
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64, copy=False), len(uniques)


def _report(name: str, before: pd.DataFrame, after: pd.DataFrame) -> FilterReport:
    report = FilterReport(
        name=name,
        removed_interactions=len(before) - len(after),
        removed_users=int(before["user_id"].nunique() - after["user_id"].nunique()),
        removed_items=int(before["item_id"].nunique() - after["item_id"].nunique()),
        remaining_interactions=len(after),
    )
    logger.info(
        "filter %s removed %d interactions, %d users, %d items",
        name,
        report.removed_interactions,
        report.removed_users,
        report.removed_items,
    )
    return report


def filter_rating(events: pd.DataFrame, min_rating: float) -> tuple[pd.DataFrame, FilterReport]:
    """Keep interactions whose rating is at least ``min_rating``."""
    if "rating" not in events.columns:
        raise DataError("is set but the data has no 'rating' field", field="filters.min_rating")
    kept = events[events["rating"].to_numpy() >= min_rating].reset_index(drop=True)
    return kept, _report(f"min_rating>={min_rating:g}", events, kept)


def filter_duplicates(events: pd.DataFrame, mode: DedupMode) -> tuple[pd.DataFrame, FilterReport]:
    """Drop repeated interactions: exact copies, or all but the first/last per user-item pair."""
    users, _ = codes_of(events["user_id"])
    items, n_items = codes_of(events["item_id"])
    pair = users * n_items + items
    if mode == "exact":
        key = pd.DataFrame({"pair": pair, "t": events["timestamp"].to_numpy()})
        dup = key.duplicated(keep="first").to_numpy()
    else:
        # Rank each pair's interactions by time (stable, so ties keep file order).
        order = np.lexsort((events["timestamp"].to_numpy(), pair))
        sorted_pair = pair[order]
        if mode == "first":
            is_dup_sorted = np.r_[False, sorted_pair[1:] == sorted_pair[:-1]]
        else:
            is_dup_sorted = np.r_[sorted_pair[:-1] == sorted_pair[1:], False]
        dup = np.empty(len(pair), dtype=bool)
        dup[order] = is_dup_sorted
    kept = events[~dup].reset_index(drop=True)
    return kept, _report(f"dedup={mode}", events, kept)


def filter_k_core(
    events: pd.DataFrame, min_user: int, min_item: int
) -> tuple[pd.DataFrame, FilterReport]:
    """Repeatedly drop users and items with too few interactions until none is left to drop."""
    users, n_users = codes_of(events["user_id"])
    items, n_items = codes_of(events["item_id"])
    keep = np.ones(len(events), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (user_count[users] >= min_user) & (item_count[items] >= min_item)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    kept = events[keep].reset_index(drop=True)
    logger.debug("k-core converged after %d rounds", rounds)
    return kept, _report(f"k_core(user>={min_user},item>={min_item})", events, kept)


def apply_filters(
    events: pd.DataFrame, config: FilterConfig
) -> tuple[pd.DataFrame, list[FilterReport]]:
    """Apply the configured filters in order: rating, duplicates, k-core."""
    reports: list[FilterReport] = []
    if config.min_rating is not None:
        events, report = filter_rating(events, config.min_rating)
        reports.append(report)
    if config.dedup != "none":
        events, report = filter_duplicates(events, config.dedup)
        reports.append(report)
    if config.min_user_interactions > 0 or config.min_item_interactions > 0:
        events, report = filter_k_core(
            events, config.min_user_interactions, config.min_item_interactions
        )
        reports.append(report)
    if len(events) == 0:
        raise DataError("removed every interaction; loosen them", field="filters")
    return events, reports
