"""The embedded default dataset: ML-100K read offline from the RecBole wheel's atomic files."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.data import DataConfig, PreparedData, prepare_data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    # The wheel is fetched once into the user cache (a package-registry download), then reused.
    return prepare_data(DataConfig(), tmp_path_factory.mktemp("run"))


def test_ml100k_statistics(prepared: PreparedData) -> None:
    stats = prepared.stats
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert stats["sequence_length"]["min"] == 20
    assert len(prepared.items) == 1682
    assert set(prepared.items.columns) == {"item_id", "title", "year", "genres"}


def test_ml100k_leave_one_out_on_disk(prepared: PreparedData) -> None:
    import pandas as pd

    table = pd.read_parquet(Path(prepared.path) / "split.parquet")
    assert list(table.columns) == ["user_id", "train_items", "valid_item", "test_item"]
    assert len(table) == 943
    assert int(table["train_items"].map(len).sum()) + 2 * 943 == 100_000
    events = pd.read_parquet(Path(prepared.path) / "events.parquet")
    # User 1's last interaction in time (ties in file order) is the test item.
    u1 = events[events["user_id"] == "1"].sort_values("timestamp", kind="stable")
    row = table.set_index("user_id").loc["1"]
    assert row["test_item"] == u1["item_id"].iloc[-1]
    assert row["valid_item"] == u1["item_id"].iloc[-2]
    assert list(row["train_items"]) == u1["item_id"].iloc[:-2].tolist()
