"""RecBole atomic files (``.inter``, ``.item``): tab-separated, header cells ``name:type``."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from llmrec.data.readers import REPLACED_LINES, read_delimited, read_header
from llmrec.data.schema import (
    DataError,
    Interactions,
    Source,
    finalize_events,
    finalize_items,
    link_items,
    short_names,
    short_repr,
)

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")

# Our field name → the atomic field that holds it, when a column map does not say otherwise.
DEFAULT_EVENT_FIELDS = {
    "user_id": "user_id",
    "item_id": "item_id",
    "timestamp": "timestamp",
    "rating": "rating",
}


def read_atomic(source: Source) -> pd.DataFrame:
    """Read one atomic file; columns are the field names without their ``:type`` suffix."""
    header = read_header(source, "\t")
    names = []
    for cell in header:
        name, sep, kind = cell.strip().partition(":")
        if not sep or kind not in ATOMIC_TYPES:
            raise DataError(
                f"header cell {short_repr(cell)} must look like name:type with type one "
                f"of {', '.join(ATOMIC_TYPES)}",
                file=source.name,
                line=1,
            )
        names.append(name)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(f"header names field(s) {duplicated} twice", file=source.name, line=1)
    return read_delimited(source.with_first_line(2), "\t", names, skip_rows=1)


def load_atomic(
    inter: Source,
    item: Source | None = None,
    *,
    name: str = "atomic",
    columns: Mapping[str, str] | None = None,
    item_columns: Mapping[str, str] | None = None,
    unknown_items: str = "error",
) -> Interactions:
    """Load RecBole atomic files.

    ``columns`` maps our event fields (``user_id``, ``item_id``, ``timestamp``, ``rating``) to
    atomic field names; ``item_columns`` maps our item field names to atomic ones (e.g.
    ``{"title": "movie_title"}``), and every other item field keeps its own name.
    """
    fields = {**DEFAULT_EVENT_FIELDS, **(columns or {})}
    raw = read_atomic(inter)
    for ours in ("user_id", "item_id", "timestamp"):
        if fields[ours] not in raw.columns:
            raise DataError(
                f"is missing (wanted for {ours}); found: {short_names(raw.columns)}",
                file=inter.name,
                field=fields[ours],
            )
    picked = {ours: raw[theirs] for ours, theirs in fields.items() if theirs in raw.columns}
    events = finalize_events(pd.DataFrame(picked), inter.with_first_line(2))
    items = None
    replaced = raw.attrs.get(REPLACED_LINES, 0)
    if item is not None:
        item_raw = read_atomic(item)
        replaced += item_raw.attrs.get(REPLACED_LINES, 0)
        rename = {fields["item_id"]: "item_id"}
        rename |= {theirs: ours for ours, theirs in (item_columns or {}).items()}
        items = finalize_items(item_raw.rename(columns=rename), item.with_first_line(2))
    events, items = link_items(events, items, inter.with_first_line(2), unknown_items)
    sources = (inter.name,) + ((item.name,) if item is not None else ())
    return Interactions(events, items, name=name, sources=sources, replaced_lines=replaced)
