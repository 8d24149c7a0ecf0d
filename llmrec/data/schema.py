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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from llmrec.errors import UserError

logger = logging.getLogger(__name__)

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("rating", "review")


class DataError(UserError):
    """Input data is malformed; the message names the file, line (or row) and field."""


@dataclass(frozen=True)
class Source:
    """A readable input: a path on disk, or bytes from somewhere else (e.g. a wheel member).

    ``first_line`` is the 1-based line of the first data row, so a row index can be turned into
    a line number for error messages. ``lines`` says whether rows are text lines at all (Parquet
    rows are not).
    """

    name: str
    opener: Callable[[], IO[bytes]]
    first_line: int = 1
    lines: bool = True

    @classmethod
    def from_path(cls, path: str | Path) -> Source:
        """A source reading a file on disk, transparently un-gzipping ``*.gz``."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: file does not exist")

        def opener() -> IO[bytes]:
            if path.suffix == ".gz":
                import gzip

                return gzip.open(path, "rb")  # type: ignore[return-value]
            return open(path, "rb")

        return cls(str(path), opener)

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Source:
        """A source over bytes already in memory."""
        return cls(name, lambda: io.BytesIO(data))

    def read_bytes(self) -> bytes:
        """The whole (decompressed) content."""
        with self.opener() as fh:
            return fh.read()

    def with_first_line(self, first_line: int) -> Source:
        """The same source whose data rows start at ``first_line``."""
        return Source(self.name, self.opener, first_line, self.lines)

    def where(self, row: int) -> str:
        """``file:line`` (or ``file, row N``) for the data row at index ``row``."""
        if not self.lines:
            return f"{self.name}, row {row + 1}"
        return f"{self.name}:{self.line_of_row(row)}"

    def line_of_row(self, row: int) -> int:
        """The 1-based line number of data row ``row``, skipping blank lines like the parsers."""
        seen = -1
        with self.opener() as fh:
            for lineno, raw in enumerate(fh, start=1):
                if lineno < self.first_line or not raw.strip():
                    continue
                seen += 1
                if seen == row:
                    return lineno
        return self.first_line + row


@dataclass(frozen=True)
class Interactions:
    """An interaction log plus its item table, in the dataset's own ids."""

    events: pd.DataFrame
    items: pd.DataFrame
    name: str = "dataset"
    sources: tuple[str, ...] = field(default_factory=tuple)

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
        raise DataError(
            f"{source.name}: missing {what}(s) {', '.join(missing)}; "
            f"found: {', '.join(map(str, frame.columns))}"
        )


def require_non_empty(frame: pd.DataFrame, source: Source) -> None:
    """Fail if a file holds no data rows."""
    if len(frame) == 0:
        raise DataError(f"{source.name}: the file has no data rows")


def check_ids(values: pd.Series, source: Source, field_name: str) -> pd.Series:
    """Ids as non-empty strings; a missing or empty id fails naming its line."""
    as_str = values.astype("str") if values.dtype != "str" else values
    bad = values.isna().to_numpy() | (as_str.str.strip() == "").to_numpy()
    row = first_bad_row(bad)
    if row is not None:
        raise DataError(f"{source.where(row)}: field '{field_name}' is empty")
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
        raise DataError(
            f"{source.where(row)}: field '{field_name}' is not a number: {values.iloc[row]!r}"
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
        raise DataError(
            f"{source.where(row)}: field 'item_id' repeats item {frame['item_id'].iloc[row]!r}"
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
            raise DataError(
                f"{events_source.where(row)}: field 'item_id' names unknown item "
                f"{events['item_id'].iloc[row]!r} (not in the item file; set "
                "dataset.unknown_items=drop to drop such events)"
            )
    return events, items
