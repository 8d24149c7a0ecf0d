"""Any CSV/TSV/Parquet interaction log, with a column map saying which column is which."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.readers import REPLACED_LINES, read_csv_with_header, read_parquet
from llmrec.data.schema import (
    DataError,
    EncodingErrors,
    Interactions,
    Source,
    finalize_events,
    finalize_items,
    first_bad_row,
    link_items,
    short_names,
    short_repr,
)

EVENT_FIELDS = ("user_id", "item_id", "timestamp", "rating", "review")


def read_table(
    path: str | Path, sep: str | None = None, encoding_errors: EncodingErrors = "strict"
) -> tuple[pd.DataFrame, Source]:
    """Read a CSV/TSV (by extension, or ``sep``) or Parquet file as strings/typed columns."""
    src = Source.from_path(path, encoding_errors)
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".parquet") or name.endswith(".pq"):
        src = src.with_rows()
        return read_parquet(src), src
    if sep is None:
        sep = "\t" if name.endswith((".tsv", ".tab")) else ","
    return read_csv_with_header(src, sep=sep), src.with_first_line(2)


def _to_seconds(values: pd.Series, source: Source, fmt: str) -> pd.Series:
    """Datetime strings → integer seconds since the epoch; unparseable values fail by line."""
    try:
        parsed = pd.to_datetime(
            values, errors="coerce", format="ISO8601" if fmt == "datetime" else fmt, utc=True
        )
    except (ValueError, TypeError) as err:  # a format pandas cannot use at all
        raise DataError(f"cannot be used: {err}", field="dataset.timestamp_format") from None
    row = first_bad_row(parsed.isna().to_numpy())
    if row is not None:
        raise source.error(
            f"is not a date/time: {short_repr(values.iloc[row])}", row=row, field="timestamp"
        )
    # The epoch in the parsed values' own resolution (ns, us, ...): dates far from it (year 1,
    # 9999) fit microseconds but not the nanoseconds a plain Timestamp(0) would force.
    epoch = pd.Timestamp(0, tz="UTC").as_unit(parsed.dt.unit)
    seconds = (parsed - epoch) // pd.Timedelta(seconds=1)
    return pd.Series(seconds.to_numpy(dtype="int64"), index=values.index)


def _pick(
    frame: pd.DataFrame, columns: Mapping[str, str], source: Source, required: tuple[str, ...]
) -> pd.DataFrame:
    missing = [ours for ours in required if columns.get(ours, ours) not in frame.columns]
    if missing:
        wanted = ", ".join(f"{m} (column '{columns.get(m, m)}')" for m in missing)
        raise source.error(
            f"is missing: no column for {wanted}; found: {short_names(frame.columns)}. "
            "Map them with dataset.columns.<field>=<column>.",
            field=columns.get(missing[0], missing[0]),
        )
    return pd.DataFrame(
        {ours: frame[theirs] for ours, theirs in columns.items() if theirs in frame.columns}
    )


def load_tabular(
    path: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    item_path: str | Path | None = None,
    item_columns: Mapping[str, str] | None = None,
    list_fields: tuple[str, ...] = (),
    list_sep: str = "|",
    sep: str | None = None,
    timestamp_format: str = "numeric",
    name: str | None = None,
    unknown_items: str = "error",
    encoding_errors: EncodingErrors = "strict",
) -> Interactions:
    """Load interactions (and optionally an item table) from CSV/TSV/Parquet files.

    ``columns`` maps our event fields (``user_id``, ``item_id``, ``timestamp``, optional
    ``rating``, ``review``) to the file's column names; unmapped fields use their own name.
    ``item_columns`` renames item-table columns to ours (at least ``item_id``); other columns are
    kept as text fields, and ``list_fields`` are split on ``list_sep`` into lists.
    ``timestamp_format`` is ``numeric``, ``datetime`` (ISO 8601), ``mixed`` or a strftime format.
    """
    raw, src = read_table(path, sep, encoding_errors)
    replaced = raw.attrs.get(REPLACED_LINES, 0)
    mapping = {f: (columns or {}).get(f, f) for f in EVENT_FIELDS}
    unknown = set(columns or {}) - set(EVENT_FIELDS)
    if unknown:
        raise DataError(
            f"names unknown field(s) {sorted(unknown)}; known: {', '.join(EVENT_FIELDS)}",
            field="dataset.columns",
        )
    picked = _pick(raw, mapping, src, ("user_id", "item_id", "timestamp"))
    if timestamp_format != "numeric":
        picked["timestamp"] = _to_seconds(picked["timestamp"], src, timestamp_format)
    events = finalize_events(picked, src)
    items = None
    sources = [src.name]
    if item_path is not None:
        item_raw, item_src = read_table(item_path, sep, encoding_errors)
        replaced += item_raw.attrs.get(REPLACED_LINES, 0)
        rename = {theirs: ours for ours, theirs in (item_columns or {}).items()}
        item_raw = item_raw.rename(columns=rename)
        if "item_id" not in item_raw.columns:
            raise item_src.error(
                "is missing; map a column to it with dataset.item_columns.item_id=<column>",
                field="item_id",
            )
        for fld in list_fields:
            if fld in item_raw.columns:
                item_raw[fld] = (
                    item_raw[fld]
                    .fillna("")
                    .astype("str")
                    .map(lambda s: [p.strip() for p in s.split(list_sep) if p.strip()])
                )
        for col in item_raw.columns:
            if col not in list_fields and col != "item_id":
                values = item_raw[col]
                item_raw[col] = np.where(values.isna(), "", values.astype("str"))
        items = finalize_items(item_raw, item_src)
        sources.append(item_src.name)
    events, items = link_items(events, items, src, unknown_items)
    stem = name or Path(path).name.split(".")[0]
    return Interactions(events, items, stem, tuple(sources), replaced)
