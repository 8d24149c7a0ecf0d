"""Chronological splits: hand-checked cases, stability on ties, no leakage, round-trips."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.data import DataError, Split, leave_one_out, temporal_split


def make(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_leave_one_out_by_time_not_file_order() -> None:
    ev = make(
        [
            ("u", "c", 30),
            ("u", "a", 10),
            ("v", "x", 5),
            ("u", "d", 40),
            ("u", "b", 20),
            ("v", "y", 6),
            ("v", "z", 7),
        ]
    )
    split = leave_one_out(ev)
    row = split.table.set_index("user_id").loc["u"]
    assert list(row["train_items"]) == ["a", "b"]
    assert (row["valid_item"], row["test_item"]) == ("c", "d")
    v = split.table.set_index("user_id").loc["v"]
    assert (list(v["train_items"]), v["valid_item"], v["test_item"]) == (["x"], "y", "z")


def test_equal_timestamps_keep_file_order() -> None:
    ev = make([("u", "first", 1), ("u", "second", 1), ("u", "third", 1), ("u", "fourth", 1)])
    row = leave_one_out(ev).table.iloc[0]
    assert list(row["train_items"]) == ["first", "second"]
    assert (row["valid_item"], row["test_item"]) == ("third", "fourth")


def test_short_users_are_dropped_and_counted() -> None:
    ev = make([("u", "a", 1), ("u", "b", 2), ("v", "a", 1), ("v", "b", 2), ("v", "c", 3)])
    split = leave_one_out(ev)
    assert split.table["user_id"].tolist() == ["v"] and split.dropped_users == 1
    with pytest.raises(DataError, match="leave_one_out needs"):
        leave_one_out(make([("u", "a", 1)]))


def test_cases_never_see_their_target() -> None:
    ev = make([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "d", 4)])
    split = leave_one_out(ev)
    valid = split.cases("valid").iloc[0]
    test = split.cases("test").iloc[0]
    assert (valid["history"], valid["target"]) == (["a", "b"], "c")
    assert (test["history"], test["target"]) == (["a", "b", "c"], "d")


def test_temporal_split_cuts_globally_by_time() -> None:
    # 10 interactions at times 0..9: 8:1:1 puts t<8 in train, t=8 valid, t=9 test.
    rows = [("u" if t % 2 else "v", f"i{t}", t) for t in range(10)]
    split = temporal_split(make(rows), [0.8, 0.1, 0.1])
    table = split.table.set_index("user_id")
    assert list(table.loc["v", "train_items"]) == ["i0", "i2", "i4", "i6"]
    assert list(table.loc["v", "valid_items"]) == ["i8"]
    assert list(table.loc["u", "test_items"]) == ["i9"]
    test_cases = split.cases("test")
    assert test_cases["target"].tolist() == ["i9"]
    assert test_cases["history"].iloc[0] == ["i1", "i3", "i5", "i7"]
    with pytest.raises(DataError, match="ratios"):
        temporal_split(make(rows), [0.5, 0.5])


def test_split_file_round_trip_and_plain_pandas(tmp_path: Path) -> None:
    ev = make(
        [
            ("u", "a", 1),
            ("u", "b", 2),
            ("u", "c", 3),
            ("w", "a", 1),
            ("w", "c", 2),
            ("w", "d", 3),
            ("w", "e", 4),
        ]
    )
    for split in (leave_one_out(ev), temporal_split(ev, [0.6, 0.2, 0.2])):
        path = tmp_path / f"{split.method}.parquet"
        split.save(path)
        back = Split.load(path)
        assert back.method == split.method
        for part in ("valid", "test"):
            pd.testing.assert_frame_equal(back.cases(part), split.cases(part))
        plain = pd.read_parquet(path)  # anyone with pandas can read it
        assert list(plain["train_items"].iloc[0]) == list(split.table["train_items"].iloc[0])


events_strategy = st.lists(
    st.tuples(st.sampled_from("abcde"), st.sampled_from("vwxyz"), st.integers(0, 5)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events_strategy)
def test_leave_one_out_matches_a_plain_python_reference(rows: list[tuple[str, str, int]]) -> None:
    ev = make(rows)
    if ev.groupby("user_id").size().max() < 3:
        return
    split = leave_one_out(ev).table.set_index("user_id")
    for user in ev["user_id"].unique():
        seq = [
            item
            for _, item, _ in sorted(
                ((t, i, pos) for pos, (u, i, t) in enumerate(rows) if u == user),
                key=lambda r: (r[0], r[2]),
            )
        ]
        if len(seq) < 3:
            assert user not in split.index
            continue
        row = split.loc[user]
        assert [*row["train_items"], row["valid_item"], row["test_item"]] == seq


@settings(max_examples=150, deadline=None)
@given(events_strategy, st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (1, 0, 0)]))
def test_temporal_split_partitions_in_time(
    rows: list[tuple[str, str, int]], ratios: tuple[float, float, float]
) -> None:
    ev = make(rows)
    split = temporal_split(ev, list(ratios))
    sizes = [
        int(split.table[c].list.len().sum()) for c in ("train_items", "valid_items", "test_items")
    ]
    assert sum(sizes) == len(ev)
    assert sizes[0] == round(len(ev) * ratios[0] / sum(ratios))
    # Per user, train + valid + test is the stable time-ordered sequence, and the global cut
    # means no train interaction is later than any test interaction.
    last_train, first_test = -1, 10**9
    for _, row in split.table.iterrows():
        user_rows = sorted(
            ((t, pos, i) for pos, (u, i, t) in enumerate(rows) if u == row["user_id"])
        )
        parts = [list(row["train_items"]), list(row["valid_items"]), list(row["test_items"])]
        assert [i for part in parts for i in part] == [i for _, _, i in user_rows]
        times = [t for t, _, _ in user_rows]
        if parts[0]:
            last_train = max(last_train, times[len(parts[0]) - 1])
        if parts[2]:
            first_test = min(first_test, times[len(parts[0]) + len(parts[1])])
    assert last_train <= first_test
