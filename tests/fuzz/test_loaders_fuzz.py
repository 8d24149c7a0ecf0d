"""Generated malformed inputs for every loader, through the real data stage.

Each input is a fixture file from ``tests/data/fixtures`` with one mutation: truncated, wrong
encoding, invalid UTF-8, wrong types, missing fields, huge values, noise lines, garbage, or
(compressed files) a damaged gzip stream. ``prepare_data`` must then either build a complete
data stage whose tables hold what the schema promises, or fail with a ``UserError`` naming the
file (and the line, row or field) and leave no stage folder, finished or temporary, behind.
Never any other exception.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.config import build_config
from llmrec.data.prepare import DataConfig, prepare_data
from llmrec.errors import UserError
from tests.fuzz.tally import Tally

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
# Examples per loader and mutation: 10 keeps the suite well under a minute on one core;
# scripts/fuzz_report.py --examples N runs more.
EXAMPLES = int(os.environ.get("LLMREC_FUZZ_EXAMPLES", "10"))

# Values that do not belong where they are put: wrong types, huge and odd numbers, long text.
ODD_TEXT = [
    "",
    " ",
    "NaN",
    "inf",
    "-1",
    "1e400",
    "99999999999999999999999999",
    "abc",
    "\u00e9t\u00e9",
    "x" * 5000,
    '"',
    'a"b',
    "\\",
    "<|im_end|>",
]
ODD_JSON: list[Any] = [
    None,
    True,
    -1,
    1.5,
    2**70,
    -(2**64),
    "abc",
    "",
    [],
    ["a", 1],
    {"a": 1},
    "x" * 5000,
    1e308,
]


@dataclass(frozen=True)
class Spec:
    """A loader, the files it reads (relative path → fixture bytes) and its config."""

    name: str
    files: dict[str, bytes]
    kind: dict[str, str]  # relative path → jsonl | delimited:<sep> | parquet
    config: Callable[[Path], dict[str, Any]]


def _read(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


_LOG = pd.read_csv(FIXTURES / "tabular/log.csv", dtype=str)

SPECS = [
    Spec(
        "ml-100k",
        {"u.data": _read("ml-100k/u.data"), "u.item": _read("ml-100k/u.item")},
        {"u.data": "delimited:\t", "u.item": "delimited:|"},
        lambda d: {"name": "ml-100k", "path": str(d)},
    ),
    Spec(
        "ml-1m",
        {"ratings.dat": _read("ml-1m/ratings.dat"), "movies.dat": _read("ml-1m/movies.dat")},
        {"ratings.dat": "delimited:::", "movies.dat": "delimited:::"},
        lambda d: {"name": "ml-1m", "path": str(d)},
    ),
    Spec(
        "amazon-2023",
        {
            "Toys.jsonl": _read("amazon2023/Toys.jsonl"),
            "meta.jsonl": _read("amazon2023/meta_Toys.jsonl"),
        },
        {"Toys.jsonl": "jsonl", "meta.jsonl": "jsonl"},
        lambda d: {
            "name": "amazon-2023",
            "path": str(d / "Toys.jsonl"),
            "item_path": str(d / "meta.jsonl"),
            "with_reviews": True,
        },
    ),
    Spec(
        "amazon-2023-gz",
        {"Toys.jsonl.gz": gzip.compress(_read("amazon2023/Toys.jsonl"), mtime=0)},
        {"Toys.jsonl.gz": "jsonl"},
        lambda d: {"name": "amazon-2023", "path": str(d / "Toys.jsonl.gz"), "with_reviews": True},
    ),
    Spec(
        "amazon-2018",
        {
            "Office.json": _read("amazon2018/Office_Products.json"),
            "meta.json": _read("amazon2018/meta_Office_Products.json"),
        },
        {"Office.json": "jsonl", "meta.json": "jsonl"},
        lambda d: {
            "name": "amazon-2018",
            "path": str(d / "Office.json"),
            "item_path": str(d / "meta.json"),
            "with_reviews": True,
        },
    ),
    Spec(
        "amazon-2018-gz",
        {
            "Office.json.gz": gzip.compress(_read("amazon2018/Office_Products.json"), mtime=0),
            "meta.json.gz": gzip.compress(_read("amazon2018/meta_Office_Products.json"), mtime=0),
        },
        {"Office.json.gz": "jsonl", "meta.json.gz": "jsonl"},
        lambda d: {
            "name": "amazon-2018",
            "path": str(d / "Office.json.gz"),
            "item_path": str(d / "meta.json.gz"),
        },
    ),
    Spec(
        "atomic",
        {"toy.inter": _read("atomic/toy.inter"), "toy.item": _read("atomic/toy.item")},
        {"toy.inter": "delimited:\t", "toy.item": "delimited:\t"},
        lambda d: {"name": "atomic", "path": str(d / "toy.inter")},
    ),
    Spec(
        "tabular-csv",
        {"log.csv": _read("tabular/log.csv"), "items.csv": _read("tabular/items.csv")},
        {"log.csv": "delimited:,", "items.csv": "delimited:,"},
        lambda d: {
            "name": "tabular",
            "path": str(d / "log.csv"),
            "item_path": str(d / "items.csv"),
            "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "score"},
            "item_columns": {"item_id": "iid", "title": "name"},
            "list_fields": ["tags"],
        },
    ),
    Spec(
        "tabular-tsv",
        {"log.tsv": _read("tabular/log.tsv")},
        {"log.tsv": "delimited:\t"},
        lambda d: {
            "name": "tabular",
            "path": str(d / "log.tsv"),
            "columns": {"user_id": "user", "item_id": "item", "timestamp": "when"},
            "timestamp_format": "datetime",
        },
    ),
    Spec(
        "tabular-parquet",
        {"log.parquet": _parquet_bytes(_LOG)},
        {"log.parquet": "parquet"},
        lambda d: {
            "name": "tabular",
            "path": str(d / "log.parquet"),
            "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "score"},
        },
    ),
]

TEXT_MUTATIONS = (
    "truncate",
    "bad_utf8",
    "wrong_encoding",
    "wrong_type",
    "missing_field",
    "huge",
    "noise_line",
    "garbage",
)
PARQUET_MUTATIONS = ("truncate", "flip_byte", "wrong_type", "missing_field", "huge", "garbage")
GZIP_MUTATIONS = ("gz_truncate", "gz_flip_byte", "gz_not_gzip")


def _cases() -> list[tuple[str, str]]:
    out = []
    for spec in SPECS:
        kinds = set(spec.kind.values())
        mutations = PARQUET_MUTATIONS if kinds == {"parquet"} else TEXT_MUTATIONS
        if any(f.endswith(".gz") for f in spec.files):
            mutations = mutations + GZIP_MUTATIONS
        out += [(spec.name, m) for m in mutations]
    return out


# ---- mutations: (content, draw) -> content ------------------------------------------------


def _lines(text: bytes) -> list[bytes]:
    return text.split(b"\n")


def _pick_line(draw: st.DrawFn, lines: list[bytes]) -> int:
    filled = [i for i, line in enumerate(lines) if line.strip()] or [0]
    return draw(st.sampled_from(filled))


def _delimited_cell(draw: st.DrawFn, text: bytes, sep: bytes, value: bytes | None) -> bytes:
    """Replace (or, with ``value`` None, remove) one cell of one line."""
    lines = _lines(text)
    i = _pick_line(draw, lines)
    cells = lines[i].split(sep)
    j = draw(st.integers(0, max(len(cells) - 1, 0)))
    if value is None:
        del cells[j]
    else:
        cells[j] = value
    lines[i] = sep.join(cells)
    return b"\n".join(lines)


def _json_field(draw: st.DrawFn, text: bytes, value: Any, delete: bool) -> bytes:
    """Set (or delete) one key of one JSON line."""
    lines = _lines(text)
    i = _pick_line(draw, lines)
    try:
        obj = json.loads(lines[i])
    except ValueError:
        return text
    if not isinstance(obj, dict) or not obj:
        return text
    key = draw(st.sampled_from(sorted(obj)))
    if delete:
        del obj[key]
    else:
        obj[key] = value
    lines[i] = json.dumps(obj).encode()
    return b"\n".join(lines)


def mutate_text(draw: st.DrawFn, text: bytes, kind: str, mutation: str) -> bytes:
    """One mutation of a text file's (decompressed) content."""
    sep = kind.split(":", 1)[1].encode() if kind.startswith("delimited") else b""
    if mutation == "truncate":
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    if mutation == "bad_utf8":
        at = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\xe9", b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80"]))
        return text[:at] + bad + text[at:]
    if mutation == "wrong_encoding":
        decoded = text.decode("utf-8", "replace") + draw(
            st.sampled_from(["", "\u00e9\u00fc", "\u2603"])
        )
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "latin-1", "cp1252", "utf-8-sig"]))
        return decoded.encode(codec, "replace")
    if mutation in ("wrong_type", "huge"):
        if kind == "jsonl":
            pool = (
                ODD_JSON
                if mutation == "wrong_type"
                else [2**70, 1e308, -1e308, "9" * 400, "x" * 200_000]
            )
            return _json_field(draw, text, draw(st.sampled_from(pool)), delete=False)
        pool_text = (
            ODD_TEXT if mutation == "wrong_type" else ["9" * 400, "1e308", "-1e308", "x" * 200_000]
        )
        value = draw(st.sampled_from(pool_text)).encode()
        return _delimited_cell(draw, text, sep, value)
    if mutation == "missing_field":
        if kind == "jsonl":
            return _json_field(draw, text, None, delete=True)
        return _delimited_cell(draw, text, sep, None)
    if mutation == "noise_line":
        lines = _lines(text)
        i = draw(st.integers(0, len(lines)))
        how = draw(st.sampled_from(["insert", "delete", "duplicate", "blank"]))
        if how == "insert":
            noise = draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
            lines.insert(i, noise)
        elif how == "delete" and i < len(lines):
            del lines[i]
        elif how == "duplicate" and i < len(lines):
            lines.insert(i, lines[i])
        else:
            lines.insert(i, b"   ")
        return b"\n".join(lines)
    if mutation == "garbage":
        return draw(st.binary(max_size=200))
    raise AssertionError(mutation)


def _parquet_column(draw: st.DrawFn, content: bytes, mutation: str) -> bytes:
    table = pq.read_table(io.BytesIO(content))
    frame = table.to_pandas()
    col = draw(st.sampled_from(list(frame.columns)))
    n = len(frame)
    if mutation == "missing_field":
        frame = frame.drop(columns=[col])
    elif mutation == "wrong_type":
        choice = draw(
            st.sampled_from(["null", "float_nan", "list", "bool", "struct", "bytes", "date"])
        )
        values: Any = {
            "null": pa.nulls(n, pa.string()),
            "float_nan": pa.array([float("nan")] * n),
            "list": pa.array([["a", "b"]] * n),
            "bool": pa.array([True] * n),
            "struct": pa.array([{"x": 1}] * n),
            "bytes": pa.array([b"\xff\xfe"] * n, pa.binary()),
            "date": pa.array(pd.to_datetime(["2021-01-01"] * n)),
        }[choice]
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.set_column(table.schema.get_field_index(col), col, values)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    else:  # huge
        value = draw(st.sampled_from([2**63 - 1, -(2**63), 1e308, float("inf"), "x" * 200_000]))
        frame[col] = [value] * n
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


def mutate(draw: st.DrawFn, spec: Spec, mutation: str) -> tuple[str, dict[str, bytes]]:
    """Apply ``mutation`` to one of the spec's files; returns the file's name and all files."""
    files = dict(spec.files)
    name = draw(st.sampled_from(sorted(files)))
    content, kind = files[name], spec.kind[name]
    gz = name.endswith(".gz")
    if mutation == "gz_truncate":
        files[name] = content[: draw(st.integers(0, len(content) - 1))]
    elif mutation == "gz_flip_byte":
        at = draw(st.integers(10, len(content) - 1))
        files[name] = (
            content[:at] + bytes([content[at] ^ draw(st.integers(1, 255))]) + content[at + 1 :]
        )
    elif mutation == "gz_not_gzip":
        files[name] = gzip.decompress(content)
    elif kind == "parquet":
        if mutation == "truncate":
            files[name] = content[: draw(st.integers(0, len(content) - 1))]
        elif mutation == "flip_byte":
            at = draw(st.integers(0, len(content) - 1))
            files[name] = content[:at] + bytes([content[at] ^ 0xFF]) + content[at + 1 :]
        elif mutation == "garbage":
            files[name] = draw(st.binary(max_size=200))
        else:
            files[name] = _parquet_column(draw, content, mutation)
    else:
        text = gzip.decompress(content) if gz else content
        text = mutate_text(draw, text, kind, mutation)
        files[name] = gzip.compress(text, mtime=0) if gz else text
    return name, files


# ---- the check ------------------------------------------------------------------------------


def check_stage(run: Path) -> None:
    """A finished data stage whose tables hold what the schema promises."""
    folder = run / "data"
    assert json.loads((folder / "_DONE.json").read_text())["stage"] == "data"
    events = pd.read_parquet(folder / "events.parquet")
    assert len(events) > 0
    for col in ("user_id", "item_id"):
        values = events[col]
        assert values.map(lambda v: isinstance(v, str) and v.strip() != "").all(), col
    assert pd.api.types.is_numeric_dtype(events["timestamp"])
    assert events["timestamp"].notna().all()
    items = pd.read_parquet(folder / "items.parquet")
    assert items["item_id"].is_unique
    assert set(events["item_id"]) <= set(items["item_id"])
    json.loads((folder / "stats.json").read_text())


def leftovers(run: Path) -> list[str]:
    """Stage folders, finished or temporary, under ``run`` (not the input fingerprint cache)."""
    if not run.exists():
        return []
    return sorted(p.name for p in run.iterdir() if p.is_dir() or p.name.endswith(".tmp"))


def try_input(tally: Tally, group: str, folder: Path, dataset: dict[str, Any]) -> None:
    """Run the data stage on one input and check how it ended."""
    run = folder / "run"
    cfg = build_config(DataConfig, {"dataset": dataset, "split": {"method": "temporal"}})
    outcome = tally.run(group, lambda: prepare_data(cfg, run))
    if isinstance(outcome, UserError):
        message = str(outcome)
        assert outcome.file is not None or outcome.field is not None, message
        assert outcome.file is None or Path(outcome.file).name in message, message
        assert "\n" not in message, message  # printed as one line
        assert leftovers(run) == [], (message, leftovers(run))
    else:
        check_stage(run)
        assert leftovers(run) == ["data"]


BY_NAME = {s.name: s for s in SPECS}


@pytest.mark.parametrize(("loader", "mutation"), _cases())
@settings(settings.get_profile("llmrec-fuzz"), max_examples=EXAMPLES)
@given(data=st.data())
def test_mutated_input_loads_or_names_its_place(
    tmp_path_factory: pytest.TempPathFactory,
    tally: Tally,
    loader: str,
    mutation: str,
    data: st.DataObject,
) -> None:
    spec = BY_NAME[loader]
    _, files = mutate(data.draw, spec, mutation)
    folder = tmp_path_factory.mktemp(f"{loader}-{mutation}")
    for rel, content in files.items():
        (folder / rel).write_bytes(content)
    try:
        try_input(tally, f"{loader}/{mutation}", folder, spec.config(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("loader", sorted(BY_NAME))
def test_unmutated_fixtures_load(tmp_path: Path, tally: Tally, loader: str) -> None:
    spec = BY_NAME[loader]
    for rel, content in spec.files.items():
        (tmp_path / rel).write_bytes(content)
    try_input(tally, f"{loader}/none", tmp_path, spec.config(tmp_path))
    assert (tmp_path / "run" / "data" / "_DONE.json").exists()
