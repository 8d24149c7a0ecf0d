"""The one structure every loader returns, and the checks that make bad input fail loudly.

``Interactions`` holds two pandas DataFrames in the dataset's own (string) ids:

* ``events``: ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64, or float64 when the
  source has fractions), optional ``rating`` (float64) and ``review`` (str). Row order is the
  source file's order; sorting by time is always stable, so equal timestamps keep that order.
* ``items``: ``item_id`` (str, unique) plus text fields (``title``, ``year``, ``genres``,
  ``brand``, ``categories``, ``description``, ...). List-valued fields are Python lists.

Errors in the input raise ``DataError`` naming the file, the line (or row) and the field.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd

from llmrec.errors import UserError

logger = logging.getLogger(__name__)

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("rating", "review")


class DataError(UserError):
    """Input data is malformed; the message names the file, line (or row) and field."""


EncodingErrors = Literal["strict", "replace"]

# What a broken compressed file raises while it is read (truncated, not gzip at all, bad CRC).
_READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class Source:
    """A readable input: a path on disk, or bytes from somewhere else (e.g. a wheel member).

    ``first_line`` is the 1-based line of the first data row, so a row index can be turned into
    a line number for error messages. ``lines`` says whether rows are text lines at all (Parquet
    rows are not). ``encoding_errors`` says what invalid UTF-8 text does: ``strict`` fails
    naming the line, ``replace`` puts U+FFFD in its place (and readers count the lines).
    """

    name: str
    opener: Callable[[], IO[bytes]]
    first_line: int = 1
    lines: bool = True
    encoding_errors: EncodingErrors = "strict"

    @classmethod
    def from_path(cls, path: str | Path, encoding_errors: EncodingErrors = "strict") -> Source:
        """A source reading a file on disk, transparently un-gzipping ``*.gz``."""
        path = Path(path)
        if not path.exists():
            raise DataError("file does not exist", file=str(path))
        if not path.is_file():
            raise DataError("is a folder, not a file", file=str(path))

        def opener() -> IO[bytes]:
            if path.suffix == ".gz":
                import gzip

                return gzip.open(path, "rb")  # type: ignore[return-value]
            return open(path, "rb")

        return cls(str(path), opener, encoding_errors=encoding_errors)

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Source:
        """A source over bytes already in memory."""
        return cls(name, lambda: io.BytesIO(data))

    def read_bytes(self) -> bytes:
        """The whole (decompressed) content; an unreadable file fails naming it."""
        try:
            with self.opener() as fh:
                return fh.read()
        except _READ_ERRORS as err:
            raise self.unreadable(err) from None

    def read_first_line(self) -> bytes:
        """The first line (e.g. a header), without reading the rest of the file."""
        try:
            with self.opener() as fh:
                return fh.readline()
        except _READ_ERRORS as err:
            raise self.unreadable(err) from None

    def unreadable(self, err: BaseException) -> DataError:
        """The error for a file that cannot be read through (a broken .gz, a permission, ...).

        For a damaged or truncated .gz, the error names the line where the readable part ends.
        """
        what = "truncated (the compressed stream ends early)" if isinstance(err, EOFError) else err
        path = Path(self.name)
        newlines = _gzip_readable_newlines(path) if path.suffix == ".gz" else None
        if newlines is not None:
            return DataError(
                f"cannot be read past this line: {what}", file=self.name, line=newlines + 1
            )
        return DataError(f"cannot be read: {what}", file=self.name)

    def with_first_line(self, first_line: int) -> Source:
        """The same source whose data rows start at ``first_line``."""
        return replace(self, first_line=first_line)

    def with_rows(self) -> Source:
        """The same source read as records, not lines (Parquet): errors name rows."""
        return replace(self, lines=False)

    def where(self, row: int) -> str:
        """``file:line`` (or ``file, row N``) for the data row at index ``row``."""
        if not self.lines:
            return f"{self.name}, row {row + 1}"
        return f"{self.name}:{self.line_of_row(row)}"

    def error(self, message: str, *, row: int | None = None, field: str | None = None) -> DataError:
        """A ``DataError`` naming this file and, when given, data row ``row`` (0-based)."""
        if row is None:
            return DataError(message, file=self.name, field=field)
        if not self.lines:
            return DataError(message, file=self.name, row=row + 1, field=field)
        return DataError(message, file=self.name, line=self.line_of_row(row), field=field)

    def line_of_row(self, row: int) -> int:
        """The 1-based line number of data row ``row``, skipping blank lines like the parsers."""
        seen = -1
        try:
            with self.opener() as fh:
                for lineno, raw in enumerate(fh, start=1):
                    if lineno < self.first_line or not raw.strip():
                        continue
                    seen += 1
                    if seen == row:
                        return lineno
        except _READ_ERRORS as err:
            raise self.unreadable(err) from None
        return self.first_line + row


def _gzip_readable_newlines(path: Path) -> int | None:
    """Newlines in the part of a gzip file that decompresses, or None if none of it does."""
    decoder = zlib.decompressobj(wbits=31)
    newlines, produced = 0, 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                while chunk:
                    out = decoder.decompress(chunk)
                    newlines, produced = newlines + out.count(b"\n"), produced + len(out)
                    # A new gzip member may follow the end of one (as gzip -c a b > c writes).
                    chunk = decoder.unused_data if decoder.eof else b""
                    if decoder.eof:
                        decoder = zlib.decompressobj(wbits=31)
    except (OSError, zlib.error):
        pass
    return newlines if produced else None


@dataclass(frozen=True)
class Interactions:
    """An interaction log plus its item table, in the dataset's own ids."""

    events: pd.DataFrame
    items: pd.DataFrame
    name: str = "dataset"
    sources: tuple[str, ...] = field(default_factory=tuple)
    # Lines whose invalid UTF-8 was read as U+FFFD (``dataset.encoding_errors=replace``).
    replaced_lines: int = 0

    @property
    def n_users(self) -> int:
        """Number of distinct users in the events."""
        return int(self.events["user_id"].nunique())

    @property
    def n_items(self) -> int:
        """Number of distinct items in the events."""
        return int(self.events["item_id"].nunique())

    def __len__(self) -> int:
        return len(self.events)


def short_repr(value: object, limit: int = 80) -> str:
    """``repr`` of a value from the data, cut so a huge field cannot flood the message."""
    if isinstance(value, np.generic):
        value = value.item()  # 'inf', not 'np.float64(inf)'
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(text)} chars)"


def short_names(names: Iterable[object], limit: int = 200) -> str:
    """Column names for a message, cut so a garbled header cannot flood it."""
    text = ", ".join(map(str, names))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_bad_row(bad: np.ndarray) -> int | None:
    """Index of the first True in a boolean mask, or None."""
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def require_columns(
    frame: pd.DataFrame, columns: tuple[str, ...] | list[str], source: Source, what: str = "column"
) -> None:
    """Fail naming the file if any required column is missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        also = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise source.error(
            f"is missing{also}; found {what}s: {short_names(frame.columns)}",
            field=missing[0],
        )


def require_non_empty(frame: pd.DataFrame, source: Source) -> None:
    """Fail if a file holds no data rows."""
    if len(frame) == 0:
        raise source.error("the file has no data rows")


def check_ids(values: pd.Series, source: Source, field_name: str) -> pd.Series:
    """Ids as non-empty strings; a missing or empty id fails naming its line."""
    as_str = values.astype("str") if values.dtype != "str" else values
    bad = values.isna().to_numpy() | (as_str.str.strip() == "").to_numpy()
    row = first_bad_row(bad)
    if row is not None:
        raise source.error("is empty", row=row, field=field_name)
    return as_str


def _parse_numbers(values: pd.Series) -> pd.Series:
    """Strings → float64; unparseable values become NaN (arrow cast first: ~10× faster)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        cast = pc.cast(pa.array(values, from_pandas=True), pa.float64())
        return pd.Series(cast.to_numpy(zero_copy_only=False), index=values.index)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pd.to_numeric(values, errors="coerce")


def check_numeric(
    values: pd.Series, source: Source, field_name: str, integral_to_int: bool = True
) -> pd.Series:
    """Parse a column as numbers; the first non-numeric value fails naming its line."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype("float64")
    else:
        numbers = _parse_numbers(values)
    bad = numbers.isna().to_numpy() | ~np.isfinite(
        numbers.to_numpy(dtype="float64", na_value=np.nan)
    )
    row = first_bad_row(bad)
    if row is not None:
        raise source.error(
            f"is not a number: {short_repr(values.iloc[row])}", row=row, field=field_name
        )
    if integral_to_int:
        arr = numbers.to_numpy(dtype="float64")
        if np.all(arr == np.floor(arr)) and np.all(np.abs(arr) < 2**62):
            return pd.Series(arr.astype("int64"), index=values.index)
    return numbers.astype("float64")


def finalize_events(frame: pd.DataFrame, source: Source) -> pd.DataFrame:
    """Validate and type an events table whose columns already carry our names."""
    require_columns(frame, REQUIRED_EVENT_COLUMNS, source, "field")
    require_non_empty(frame, source)
    out = pd.DataFrame(
        {
            "user_id": check_ids(frame["user_id"], source, "user_id"),
            "item_id": check_ids(frame["item_id"], source, "item_id"),
            "timestamp": check_numeric(frame["timestamp"], source, "timestamp"),
        }
    )
    if "rating" in frame.columns:
        out["rating"] = check_numeric(frame["rating"], source, "rating", integral_to_int=False)
    if "review" in frame.columns:
        out["review"] = frame["review"].fillna("").astype("str")
    return out.reset_index(drop=True)


def finalize_items(frame: pd.DataFrame, source: Source) -> pd.DataFrame:
    """Validate an item table: ids present and unique."""
    require_columns(frame, ("item_id",), source, "field")
    require_non_empty(frame, source)
    frame = frame.reset_index(drop=True)
    frame["item_id"] = check_ids(frame["item_id"], source, "item_id")
    dup = frame["item_id"].duplicated().to_numpy()
    row = first_bad_row(dup)
    if row is not None:
        raise source.error(
            f"repeats item {short_repr(frame['item_id'].iloc[row])}", row=row, field="item_id"
        )
    return frame


def link_items(
    events: pd.DataFrame,
    items: pd.DataFrame | None,
    events_source: Source,
    unknown_items: str = "error",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every event's item is in the item table (or derive the table when there is none).

    ``unknown_items="error"`` fails naming the first event whose item is unknown;
    ``"drop"`` removes such events and logs how many.
    """
    if items is None:
        ids = pd.unique(events["item_id"])
        return events, pd.DataFrame({"item_id": pd.Series(ids, dtype="str")})
    known = events["item_id"].isin(items["item_id"]).to_numpy()
    if not known.all():
        if unknown_items == "drop":
            n = int((~known).sum())
            logger.warning(
                "%s: dropping %d events whose item is not in the item table", events_source.name, n
            )
            events = events[known].reset_index(drop=True)
        else:
            row = first_bad_row(~known)
            assert row is not None
            raise events_source.error(
                f"names unknown item {short_repr(events['item_id'].iloc[row])} (not in the item "
                "file; set dataset.unknown_items=drop to drop such events)",
                row=row,
                field="item_id",
            )
    return events, items
