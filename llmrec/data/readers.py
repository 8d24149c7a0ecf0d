"""Fast file readers with exact error locations.

The fast path is pyarrow (multi-threaded, vectorised). When it rejects a file, the file is scanned
once more line by line only to say *where* it is malformed, so errors name the line without the
happy path ever paying for a Python loop per row.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from llmrec.data.schema import DataError, Source


def read_header(source: Source, sep: str) -> list[str]:
    """The first line of a delimited file, split into column names."""
    with source.opener() as fh:
        first = fh.readline().decode("utf-8-sig").rstrip("\r\n")
    if not first.strip():
        raise DataError(f"{source.name}: the file is empty (no header line)")
    return first.split(sep)


def read_delimited(
    source: Source,
    sep: str,
    names: list[str],
    *,
    skip_rows: int = 0,
    quoted: bool = False,
    encoding: str = "utf-8",
    data: bytes | None = None,
) -> pd.DataFrame:
    """Read a delimited text file as all-string columns named ``names``.

    ``skip_rows`` lines (e.g. a header) are skipped; rows with the wrong number of fields fail
    naming their line. Blank lines are ignored.
    """
    raw = data if data is not None else source.read_bytes()
    if encoding.lower().replace("-", "") not in ("utf8", "ascii"):
        raw = raw.decode(encoding).encode("utf-8")
    if not raw.strip():
        raise DataError(f"{source.name}: the file is empty")
    read_opts = pacsv.ReadOptions(column_names=names, skip_rows=skip_rows, block_size=1 << 24)
    parse_opts = pacsv.ParseOptions(
        delimiter=sep, quote_char='"' if quoted else False, newlines_in_values=False
    )
    convert_opts = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(
            io.BytesIO(raw),
            read_options=read_opts,
            parse_options=parse_opts,
            convert_options=convert_opts,
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise _locate_delimited_error(
            raw, source, sep, len(names), skip_rows, quoted, err
        ) from None
    return table.to_pandas()


def _locate_delimited_error(
    raw: bytes,
    source: Source,
    sep: str,
    n_fields: int,
    skip_rows: int,
    quoted: bool,
    err: Exception,
) -> DataError:
    """Find the first malformed line of a delimited file (slow path, errors only)."""
    text = io.StringIO(raw.decode("utf-8", errors="replace"), newline="")
    lines = csv.reader(text, delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
    for lineno, fields in enumerate(lines, start=1):
        if lineno <= skip_rows or not fields or fields == [""]:
            continue
        if len(fields) != n_fields:
            return DataError(
                f"{source.name}:{lineno}: malformed line: expected {n_fields} fields separated "
                f"by {sep!r}, found {len(fields)}"
            )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as uerr:
        line = raw[: uerr.start].count(b"\n") + 1
        return DataError(f"{source.name}:{line}: not valid UTF-8 text ({uerr.reason})")
    return DataError(f"{source.name}: cannot parse: {err}")


def read_csv_with_header(source: Source, sep: str = ",", quoted: bool = True) -> pd.DataFrame:
    """Read a CSV/TSV whose first line names the columns, all values as strings."""
    names = [n.strip() for n in read_header(source, sep)]
    if quoted:
        names = [n.strip('"') for n in names]
    frame = read_delimited(source.with_first_line(2), sep, names, skip_rows=1, quoted=quoted)
    return frame


def read_jsonl(source: Source, fields: dict[str, pa.DataType]) -> pd.DataFrame:
    """Read JSON Lines keeping only ``fields`` (name → arrow type); other keys are ignored.

    Missing keys become nulls. A line that is not JSON, or whose field has the wrong type, fails
    naming the line and field.
    """
    raw = source.read_bytes()
    if not raw.strip():
        raise DataError(f"{source.name}: the file is empty")
    schema = pa.schema([pa.field(k, t) for k, t in fields.items()])
    try:
        table = pajson.read_json(
            io.BytesIO(raw),
            read_options=pajson.ReadOptions(block_size=1 << 24),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid as err:
        raise _locate_json_error(raw, source, fields, err) from None
    return table.to_pandas()


def _json_type_ok(value: Any, tp: pa.DataType) -> bool:
    if value is None:
        return True
    if pa.types.is_string(tp) or pa.types.is_large_string(tp):
        return isinstance(value, str)
    if pa.types.is_integer(tp):
        return isinstance(value, int) and not isinstance(value, bool)
    if pa.types.is_floating(tp):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if pa.types.is_boolean(tp):
        return isinstance(value, bool)
    if pa.types.is_list(tp):
        return isinstance(value, list) and all(_json_type_ok(v, tp.value_type) for v in value)
    return True


def _locate_json_error(
    raw: bytes, source: Source, fields: dict[str, pa.DataType], err: Exception
) -> DataError:
    """Find the first bad line of a JSON Lines file (slow path, errors only)."""
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as jerr:
            return DataError(f"{source.name}:{lineno}: malformed JSON: {jerr.msg}")
        if not isinstance(obj, dict):
            return DataError(f"{source.name}:{lineno}: expected a JSON object per line")
        for name, tp in fields.items():
            if not _json_type_ok(obj.get(name), tp):
                return DataError(
                    f"{source.name}:{lineno}: field '{name}' has {obj.get(name)!r}, expected {tp}"
                )
    return DataError(f"{source.name}: cannot parse JSON Lines: {err}")


def read_parquet(source: Source) -> pd.DataFrame:
    """Read a Parquet file; row numbers replace line numbers in errors."""
    import pyarrow.parquet as pq

    try:
        with source.opener() as fh:
            table = pq.read_table(fh)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{source.name}: not a readable Parquet file: {err}") from None
    return table.to_pandas()
