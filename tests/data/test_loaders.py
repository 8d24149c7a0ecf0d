"""Every loader on small fixture files, and every kind of bad input failing by file/line/field."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from llmrec.data import DataError, DatasetConfig, load_dataset
from llmrec.data.amazon import load_amazon
from llmrec.data.atomic import load_atomic
from llmrec.data.movielens import load_ml1m, load_ml100k_grouplens
from llmrec.data.schema import Source
from llmrec.data.tabular import load_tabular


def test_ml100k_grouplens(fixtures: Path) -> None:
    data = load_ml100k_grouplens(fixtures / "ml-100k")
    assert len(data) == 9 and data.n_users == 3 and data.n_items == 3
    assert data.events["timestamp"].dtype == "int64"
    assert data.events["rating"].tolist()[:3] == [4.0, 3.0, 5.0]
    toy = data.items.set_index("item_id").loc["10"]
    assert toy["title"] == "Toy Story" and toy["year"] == "1995"
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]


def test_ml1m(fixtures: Path) -> None:
    data = load_ml1m(fixtures / "ml-1m")
    assert (len(data), data.n_users, data.n_items) == (6, 3, 3)
    assert data.items.set_index("item_id").loc["11", "genres"] == [
        "Action",
        "Adventure",
        "Thriller",
    ]


def test_atomic(fixtures: Path) -> None:
    inter = Source.from_path(fixtures / "atomic" / "toy.inter")
    item = Source.from_path(fixtures / "atomic" / "toy.item")
    data = load_atomic(inter, item, item_columns={"title": "movie_title"})
    assert (len(data), data.n_users) == (4, 2)
    assert set(data.items.columns) == {"item_id", "title", "release_year", "class"}
    assert data.items["title"].tolist() == ["Toy Story", "GoldenEye", "Four Rooms"]


def test_atomic_via_config(fixtures: Path) -> None:
    data = load_dataset(DatasetConfig(name="atomic", path=str(fixtures / "atomic/toy.inter")))
    assert len(data.items) == 3  # found toy.item beside toy.inter


@pytest.mark.parametrize("reviews", ["Toys.jsonl", "Toys.jsonl.gz"])
def test_amazon_2023(fixtures: Path, reviews: str) -> None:
    folder = fixtures / "amazon2023"
    data = load_amazon(folder / reviews, folder / "meta_Toys.jsonl", with_reviews=True)
    assert (len(data), data.n_users, data.n_items) == (4, 2, 3)
    assert data.events["item_id"].tolist() == ["P1", "P2", "P1", "P3"]  # parent_asin
    assert data.events["timestamp"].iloc[0] == 1588687728923
    assert data.events["review"].iloc[0] == "Great. Loved it"
    items = data.items.set_index("item_id")
    assert items.loc["P1", "brand"] == "TrainCo"
    assert items.loc["P1", "categories"] == ["Toys & Games", "Trains"]
    assert items.loc["P1", "description"] == "A train for kids"
    assert items.loc["P2", "title"] == "Puzzle {{ 7*7 }}"  # kept literally


def test_amazon_2018(fixtures: Path, tmp_path: Path) -> None:
    folder = fixtures / "amazon2018"
    gz = tmp_path / "meta.json.gz"
    gz.write_bytes(gzip.compress((folder / "meta_Office_Products.json").read_bytes()))
    data = load_amazon(folder / "Office_Products.json", gz, release="2018")
    assert (len(data), data.n_users, data.n_items) == (3, 2, 2)
    assert data.events["timestamp"].tolist() == [1252800000, 1252886400, 1252540800]
    assert data.items.set_index("item_id").loc["B1", "brand"] == "InkCo"


def test_amazon_without_meta_derives_items(fixtures: Path) -> None:
    data = load_amazon(fixtures / "amazon2023" / "Toys.jsonl")
    assert data.items["item_id"].tolist() == ["P1", "P2", "P3"]


def test_tabular_csv_with_column_map(fixtures: Path) -> None:
    data = load_tabular(
        fixtures / "tabular" / "log.csv",
        columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "score"},
        item_path=fixtures / "tabular" / "items.csv",
        item_columns={"item_id": "iid", "title": "name"},
        list_fields=("tags",),
    )
    assert (len(data), data.n_users, data.n_items) == (4, 2, 3)
    items = data.items.set_index("item_id")
    assert items.loc["i1", "title"] == "Red, the book"  # quoted comma
    assert items.loc["i1", "tags"] == ["a", "b"] and items.loc["i3", "tags"] == []


def test_tabular_tsv_datetimes(fixtures: Path) -> None:
    data = load_tabular(
        fixtures / "tabular" / "log.tsv",
        columns={"user_id": "user", "item_id": "item", "timestamp": "when"},
        timestamp_format="datetime",
    )
    assert data.events["timestamp"].tolist() == [1609495200, 1609545600, 1609502400]


def test_tabular_parquet(fixtures: Path, tmp_path: Path) -> None:
    frame = pd.DataFrame({"u": ["a", "a", "b"], "i": ["x", "y", "x"], "t": [3, 1, 2]})
    frame.to_parquet(tmp_path / "log.parquet")
    data = load_tabular(
        tmp_path / "log.parquet", columns={"user_id": "u", "item_id": "i", "timestamp": "t"}
    )
    assert data.events["timestamp"].tolist() == [3, 1, 2]
    bad = frame.assign(t=["3", "soon", "2"])
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet, row 2: field 'timestamp'.*'soon'"):
        load_tabular(
            tmp_path / "bad.parquet", columns={"user_id": "u", "item_id": "i", "timestamp": "t"}
        )


# ---- bad input: (what to corrupt, how, the error it must give) ----------------------------


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _ml100k(f: Path) -> object:
    return load_ml100k_grouplens(f / "ml-100k")


def _atomic(f: Path) -> object:
    return load_atomic(
        Source.from_path(f / "atomic/toy.inter"), Source.from_path(f / "atomic/toy.item")
    )


def _amazon(f: Path) -> object:
    return load_amazon(f / "amazon2023/Toys.jsonl", f / "amazon2023/meta_Toys.jsonl")


def _csv(f: Path) -> object:
    return load_tabular(
        f / "tabular/log.csv",
        columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"},
        item_path=f / "tabular/items.csv",
        item_columns={"item_id": "iid"},
    )


BAD_INPUT = [
    # malformed lines
    ("ml-100k/u.data", 4, "1\t12\t2\t300\t7", _ml100k, r"u\.data:4: malformed line: expected 4"),
    ("atomic/toy.inter", 3, "1\t11", _atomic, r"toy\.inter:3: malformed line"),
    (
        "amazon2023/Toys.jsonl",
        2,
        '{"user_id": "U1", "parent_asin": ',
        _amazon,
        r"Toys\.jsonl:2: malformed JSON",
    ),
    ("tabular/log.csv", 3, "u1,i2,200,5,extra", _csv, r"log\.csv:3: malformed line"),
    # non-numeric timestamps, named by line and field
    (
        "ml-100k/u.data",
        3,
        "2\t10\t5\tyesterday",
        _ml100k,
        r"u\.data:3: field 'timestamp' is not a number: 'yesterday'",
    ),
    ("atomic/toy.inter", 4, "2\t10\t5\tNaN", _atomic, r"toy\.inter:4: field 'timestamp'"),
    ("tabular/log.csv", 5, "u1,i3,soon,1", _csv, r"log\.csv:5: field 'timestamp'.*'soon'"),
    (
        "amazon2023/Toys.jsonl",
        3,
        '{"user_id": "U2", "parent_asin": "P1", "timestamp": "noon", "rating": 1.0}',
        _amazon,
        r"Toys\.jsonl:3: field 'timestamp' has 'noon'",
    ),
    # unknown item ids
    (
        "ml-100k/u.data",
        5,
        "2\t99\t4\t160",
        _ml100k,
        r"u\.data:5: field 'item_id' names unknown "
        r"item '99'",
    ),
    ("tabular/log.csv", 4, "u2,i9,150,3", _csv, r"log\.csv:4: field 'item_id' names unknown"),
    (
        "amazon2023/Toys.jsonl",
        4,
        '{"user_id": "U2", "parent_asin": "P9", "timestamp": 1, "rating": 3.0}',
        _amazon,
        r"Toys\.jsonl:4: field 'item_id' names unknown item 'P9'",
    ),
    # empty ids, repeated items, bad headers
    ("ml-100k/u.data", 2, "\t11\t3\t200", _ml100k, r"u\.data:2: field 'user_id' is empty"),
    (
        "atomic/toy.item",
        3,
        "10\tAgain\t1995\tAction",
        _atomic,
        r"toy\.item:3: field 'item_id' repeats item '10'",
    ),
    (
        "atomic/toy.inter",
        1,
        "user_id:token\titem_id\trating:float\ttimestamp:float",
        _atomic,
        r"toy\.inter:1: header cell 'item_id'",
    ),
]


@pytest.mark.parametrize(("file", "line", "text", "loader", "message"), BAD_INPUT)
def test_bad_input_names_file_line_field(
    fixtures: Path, file: str, line: int, text: str, loader: object, message: str
) -> None:
    _replace_line(fixtures / file, line, text)
    with pytest.raises(DataError, match=message):
        loader(fixtures)  # type: ignore[operator]


def test_line_numbers_skip_blank_lines(fixtures: Path) -> None:
    path = fixtures / "ml-100k/u.data"
    lines = path.read_text().splitlines()
    lines.insert(1, "")
    lines[5] = "1\t12\t2\tlater"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u\.data:6: field 'timestamp'"):
        _ml100k(fixtures)


def test_missing_column(fixtures: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"log\.csv: field 'time' is missing: no column for timestamp \(column "
        r"'time'\)",
    ):
        load_tabular(
            fixtures / "tabular/log.csv",
            columns={"user_id": "uid", "item_id": "iid", "timestamp": "time"},
        )
    (fixtures / "atomic/toy.inter").write_text("user_id:token\titem_id:token\n1\t10\n")
    with pytest.raises(DataError, match=r"toy\.inter: field 'timestamp' is missing"):
        _atomic(fixtures)


@pytest.mark.parametrize(
    "file", ["ml-100k/u.data", "atomic/toy.inter", "amazon2023/Toys.jsonl", "tabular/log.csv"]
)
def test_empty_file(fixtures: Path, file: str) -> None:
    (fixtures / file).write_text("")
    loader = {"ml-100k": _ml100k, "atomic": _atomic, "amazon2023": _amazon, "tabular": _csv}[
        file.split("/")[0]
    ]
    with pytest.raises(DataError, match="empty"):
        loader(fixtures)


def test_header_only_file_has_no_rows(fixtures: Path) -> None:
    (fixtures / "tabular/log.csv").write_text("uid,iid,ts,score\n")
    with pytest.raises(DataError, match=r"log\.csv: the file has no data rows"):
        _csv(fixtures)


def test_missing_file() -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tabular("/nonexistent/log.csv")


def test_unknown_items_can_be_dropped(fixtures: Path) -> None:
    _replace_line(fixtures / "ml-100k/u.data", 5, "2\t99\t4\t160")
    data = load_ml100k_grouplens(fixtures / "ml-100k", unknown_items="drop")
    assert len(data) == 8 and "99" not in set(data.events["item_id"])


def test_unknown_dataset_and_missing_path() -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset(DatasetConfig(name="nope", path="x"))
    with pytest.raises(DataError, match=r"dataset\.path: is required for dataset 'ml-1m'"):
        load_dataset(DatasetConfig(name="ml-1m"))
