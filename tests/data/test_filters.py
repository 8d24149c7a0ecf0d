"""Filters: each removes what it should, reports it, and is off unless configured."""

from __future__ import annotations

import pandas as pd
import pytest

from llmrec.data import DataError, FilterConfig, apply_filters
from llmrec.data.filters import filter_duplicates, filter_k_core, filter_rating


def events(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])


def test_all_filters_off_by_default() -> None:
    ev = events([("a", "x", 1, 1.0), ("a", "x", 1, 1.0)])
    kept, reports = apply_filters(ev, FilterConfig())
    assert len(kept) == 2 and reports == []


def test_rating_threshold() -> None:
    ev = events([("a", "x", 1, 5.0), ("a", "y", 2, 2.0), ("b", "y", 3, 4.0)])
    kept, report = filter_rating(ev, 4)
    assert kept["item_id"].tolist() == ["x", "y"]
    assert (report.removed_interactions, report.removed_users, report.removed_items) == (1, 0, 0)
    with pytest.raises(DataError, match="no 'rating'"):
        filter_rating(ev.drop(columns="rating"), 4)


def test_dedup_modes() -> None:
    ev = events([("a", "x", 5, 1.0), ("a", "x", 1, 2.0), ("a", "x", 5, 3.0), ("b", "x", 2, 4.0)])
    exact, rep = filter_duplicates(ev, "exact")
    assert exact["rating"].tolist() == [1.0, 2.0, 4.0] and rep.removed_interactions == 1
    first, _ = filter_duplicates(ev, "first")
    assert first["rating"].tolist() == [2.0, 4.0]  # the earliest (t=1) kept, in file order
    last, _ = filter_duplicates(ev, "last")
    assert last["rating"].tolist() == [3.0, 4.0]  # ties at t=5 keep the later line


def test_k_core_cascades_until_stable() -> None:
    # Item z has one interaction; removing it leaves user c with one, so c goes too, which
    # leaves item y with one interaction, so y goes as well.
    ev = events(
        [
            ("a", "x", 1, 1.0),
            ("a", "w", 2, 1.0),
            ("b", "x", 3, 1.0),
            ("b", "w", 4, 1.0),
            ("c", "y", 5, 1.0),
            ("c", "z", 6, 1.0),
            ("a", "y", 7, 1.0),
        ]
    )
    kept, report = filter_k_core(ev, 2, 2)
    assert sorted(set(kept["item_id"])) == ["w", "x"]
    assert sorted(set(kept["user_id"])) == ["a", "b"]
    assert (report.removed_interactions, report.removed_users, report.removed_items) == (3, 1, 2)
    user_counts = kept["user_id"].value_counts()
    item_counts = kept["item_id"].value_counts()
    assert user_counts.min() >= 2 and item_counts.min() >= 2


def test_filters_apply_in_order_and_report_each() -> None:
    ev = events(
        [
            ("a", "x", 1, 5.0),
            ("a", "x", 2, 5.0),
            ("a", "y", 3, 1.0),
            ("b", "x", 4, 5.0),
            ("b", "z", 5, 5.0),
        ]
    )
    cfg = FilterConfig(
        min_rating=4, dedup="first", min_user_interactions=2, min_item_interactions=1
    )
    kept, reports = apply_filters(ev, cfg)
    assert [r.name.split("(")[0].split("=")[0].split(">")[0] for r in reports] == [
        "min_rating",
        "dedup",
        "k_core",
    ]
    assert kept["item_id"].tolist() == ["x", "z"]


def test_filters_that_remove_everything_fail() -> None:
    with pytest.raises(DataError, match="removed every interaction"):
        apply_filters(events([("a", "x", 1, 1.0)]), FilterConfig(min_user_interactions=5))
