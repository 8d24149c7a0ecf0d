"""Fast file readers with exact error locations.

The fast path is pyarrow (multi-threaded, vectorised). When it rejects a file, the file is scanned
once more line by line only to say *where* it is malformed, so errors name the line without the
happy path ever paying for a Python loop per row.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from llmrec.data.schema import DataError, Source, short_repr

logger = logging.getLogger(__name__)

# Rows of pandas frames a reader returns carry, in ``frame.attrs[REPLACED_LINES]``, how many
# lines had invalid UTF-8 replaced (``Source.encoding_errors="replace"``); loaders add them up.
REPLACED_LINES = "replaced_lines"
_CHUNK = 1 << 24


def first_invalid_utf8(raw: bytes, start: int = 0) -> tuple[int, str] | None:
    """Offset (into ``raw``) and reason of the first invalid UTF-8 in ``raw[start:]``, or None.

    Decodes in chunks, so validating a large file never holds a second copy of it as text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    for pos in range(start, max(len(raw), start + 1), _CHUNK):
        # Offsets in an error count from the bytes the decoder still held from the last chunk.
        held = len(decoder.getstate()[0])
        try:
            decoder.decode(view[pos : pos + _CHUNK], final=pos + _CHUNK >= len(raw))
        except UnicodeDecodeError as err:
            return pos - held + err.start, err.reason
    return None


def check_utf8(raw: bytes, source: Source) -> tuple[bytes, int]:
    """``raw`` checked as UTF-8: returns it with the number of lines whose text was replaced.

    Invalid UTF-8 fails naming the line (``source.encoding_errors="strict"``, the default), or
    each invalid sequence becomes U+FFFD (``"replace"``), line by line, and is counted.
    """
    bad = first_invalid_utf8(raw)
    if bad is None:
        return raw, 0
    if source.encoding_errors != "replace":
        offset, reason = bad
        line = raw.count(b"\n", 0, offset) + 1
        raise DataError(
            f"not valid UTF-8 text ({reason}, byte {raw[offset : offset + 1]!r}); fix the file, "
            "or set dataset.encoding_errors=replace to read such bytes as U+FFFD",
            file=source.name,
            line=line,
        )
    parts, pos, replaced = [], 0, 0
    while bad is not None:
        line_start = raw.rfind(b"\n", 0, bad[0]) + 1
        line_end = raw.find(b"\n", bad[0])
        line_end = len(raw) if line_end < 0 else line_end
        parts += [raw[pos:line_start], raw[line_start:line_end].decode("utf-8", "replace").encode()]
        replaced += 1
        pos = line_end
        bad = first_invalid_utf8(raw, pos)
    parts.append(raw[pos:])
    logger.warning(
        "%s: invalid UTF-8 on %d line(s) read as U+FFFD (dataset.encoding_errors=replace)",
        source.name,
        replaced,
    )
    return b"".join(parts), replaced


def read_header(source: Source, sep: str) -> list[str]:
    """The first line of a delimited file, split into column names."""
    raw, _ = check_utf8(source.read_first_line(), source)
    first = raw.decode("utf-8-sig").rstrip("\r\n")
    if not first.strip():
        raise source.error("the file is empty (no header line)")
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
    naming their line. Blank lines are ignored. ``data`` is the file's content as UTF-8 when
    the caller has read (and checked) it already.
    """
    replaced = 0
    if data is not None:
        raw = data
    elif encoding.lower().replace("-", "") in ("utf8", "ascii"):
        raw, replaced = check_utf8(source.read_bytes(), source)
    else:
        raw = decode_text(source.read_bytes(), source, encoding).encode("utf-8")
    if not raw.strip():
        raise source.error("the file is empty")
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
    except (pa.ArrowException, UnicodeDecodeError) as err:
        raise _locate_delimited_error(
            raw, source, sep, len(names), skip_rows, quoted, err
        ) from None
    frame = table.to_pandas()
    frame.attrs[REPLACED_LINES] = replaced
    return frame


def decode_text(raw: bytes, source: Source, encoding: str) -> str:
    """``raw`` decoded from ``encoding``; undecodable bytes fail naming the line."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"not valid {encoding} text ({err.reason})", file=source.name, line=line
        ) from None
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r}", file=source.name) from None


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
    try:
        for fields in lines:
            lineno = lines.line_num
            if lineno <= skip_rows or not fields or fields == [""]:
                continue
            if len(fields) != n_fields:
                return DataError(
                    f"malformed line: expected {n_fields} fields separated by {sep!r}, "
                    f"found {len(fields)}",
                    file=source.name,
                    line=lineno,
                )
            if quoted and any("\n" in f or "\r" in f for f in fields):
                return DataError(
                    "a quoted value runs over a line end (an unclosed '\"'?)",
                    file=source.name,
                    line=lineno - sum(f.count("\n") for f in fields),
                )
    except csv.Error as cerr:
        return DataError(f"malformed line: {cerr}", file=source.name, line=lines.line_num)
    bad = first_invalid_utf8(raw)
    if bad is not None:
        line = raw.count(b"\n", 0, bad[0]) + 1
        return DataError(f"not valid UTF-8 text ({bad[1]})", file=source.name, line=line)
    return DataError(f"cannot parse: {err}", file=source.name)


def read_csv_with_header(source: Source, sep: str = ",", quoted: bool = True) -> pd.DataFrame:
    """Read a CSV/TSV whose first line names the columns, all values as strings."""
    names = [n.strip() for n in read_header(source, sep)]
    if quoted:
        names = [n.strip('"') for n in names]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(f"header names column(s) {duplicated} twice", file=source.name, line=1)
    return read_delimited(source.with_first_line(2), sep, names, skip_rows=1, quoted=quoted)


def read_jsonl(source: Source, fields: dict[str, pa.DataType]) -> pd.DataFrame:
    """Read JSON Lines keeping only ``fields`` (name → arrow type); other keys are ignored.

    Missing keys become nulls. A line that is not JSON, or whose field has the wrong type, fails
    naming the line and field.
    """
    raw, replaced = check_utf8(source.read_bytes(), source)
    if not raw.strip():
        raise source.error("the file is empty")
    schema = pa.schema([pa.field(k, t) for k, t in fields.items()])
    try:
        table = pajson.read_json(
            io.BytesIO(raw),
            read_options=pajson.ReadOptions(block_size=1 << 24),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowException as err:
        raise _locate_json_error(raw, source, fields, err) from None
    frame = table.to_pandas()
    frame.attrs[REPLACED_LINES] = replaced
    return frame


def _json_type_ok(value: Any, tp: pa.DataType) -> bool:
    if value is None:
        return True
    if pa.types.is_string(tp) or pa.types.is_large_string(tp):
        return isinstance(value, str)
    if pa.types.is_integer(tp):
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if pa.types.is_floating(tp):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if pa.types.is_boolean(tp):
        return isinstance(value, bool)
    if pa.types.is_list(tp):
        return isinstance(value, list) and all(_json_type_ok(v, tp.value_type) for v in value)
    return True


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _locate_json_error(
    raw: bytes, source: Source, fields: dict[str, pa.DataType], err: Exception
) -> DataError:
    """Find the first bad line of a JSON Lines file (slow path, errors only)."""
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_no_constants)
        except ValueError as jerr:  # JSONDecodeError, NaN/Infinity, too-long integers
            reason = jerr.msg if isinstance(jerr, json.JSONDecodeError) else str(jerr)
            return DataError(f"malformed JSON: {reason}", file=source.name, line=lineno)
        except RecursionError:
            return DataError("malformed JSON: nested too deeply", file=source.name, line=lineno)
        if not isinstance(obj, dict):
            return DataError("expected a JSON object per line", file=source.name, line=lineno)
        for name, tp in fields.items():
            if not _json_type_ok(obj.get(name), tp):
                return DataError(
                    f"has {short_repr(obj.get(name))}, expected {tp}",
                    file=source.name,
                    line=lineno,
                    field=name,
                )
    return DataError(f"cannot parse JSON Lines: {err}", file=source.name)


def read_parquet(source: Source) -> pd.DataFrame:
    """Read a Parquet file; row numbers replace line numbers in errors.

    Text columns are checked as UTF-8 like text files (Parquet readers do not check them).
    """
    import pyarrow.parquet as pq

    try:
        with source.opener() as fh:
            table = pq.read_table(fh)
        table, replaced = _check_parquet_text(table, source)
        table.validate(full=True)
    except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError) as err:
        # UnicodeDecodeError: a damaged schema (column names are read as UTF-8 on access).
        raise source.error(f"not a readable Parquet file: {err}") from None
    try:
        frame = table.to_pandas()
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise _locate_parquet_column(table, source, err) from None
    frame.attrs[REPLACED_LINES] = replaced
    return frame


def _locate_parquet_column(table: pa.Table, source: Source, err: Exception) -> DataError:
    """The column pandas cannot take (slow path, errors only)."""
    for name in table.column_names:
        try:
            table.select([name]).to_pandas()
        except (pa.ArrowException, TypeError, ValueError) as col_err:
            return DataError(
                f"has type {table.schema.field(name).type}, which cannot be read: {col_err}",
                file=source.name,
                field=str(name),
            )
    return source.error(f"cannot be converted to a table: {err}")


def _check_parquet_text(table: pa.Table, source: Source) -> tuple[pa.Table, int]:
    """``table`` with its string columns checked as UTF-8 (see ``check_utf8``)."""
    replaced = 0
    for index, name in enumerate(table.column_names):
        column = table.column(index)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        values = column.cast(pa.large_binary()).to_pylist()  # the slow path: errors only
        fixed: list[str | None] = []
        for row, value in enumerate(values):
            if value is None:
                fixed.append(None)
                continue
            try:
                fixed.append(value.decode("utf-8"))
            except UnicodeDecodeError as err:
                if source.encoding_errors != "replace":
                    raise DataError(
                        f"is not valid UTF-8 text ({err.reason}); fix the file, or set "
                        "dataset.encoding_errors=replace to read such bytes as U+FFFD",
                        file=source.name,
                        row=row + 1,
                        field=str(name),
                    ) from None
                fixed.append(value.decode("utf-8", "replace"))
                replaced += 1
        table = table.set_column(index, name, pa.array(fixed, column.type))
    return table, replaced
