"""Amazon Reviews: the 2023 JSONL release and the 2018 per-category JSON files (plain or .gz).

Both are JSON Lines: a review file (one interaction per line) and a ``meta_*`` file (one item per
line). Only the fields we use are parsed (an explicit arrow schema), so odd extra fields in the
wild (``details``, ``images``, ...) never break loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from llmrec.data.readers import REPLACED_LINES, read_jsonl
from llmrec.data.schema import (
    DataError,
    EncodingErrors,
    Interactions,
    Source,
    finalize_events,
    finalize_items,
    link_items,
)

STR = pa.string()
STR_LIST = pa.list_(pa.string())


@dataclass(frozen=True)
class AmazonFormat:
    """Field names of one Amazon release, mapped to ours."""

    user: str
    item: str
    timestamp: str
    rating: str
    review_text: str
    review_title: str
    meta_item: str
    brand: str
    categories: str
    description: str
    main_category: str


AMAZON_2023 = AmazonFormat(
    user="user_id",
    item="parent_asin",
    timestamp="timestamp",
    rating="rating",
    review_text="text",
    review_title="title",
    meta_item="parent_asin",
    brand="store",
    categories="categories",
    description="description",
    main_category="main_category",
)
AMAZON_2018 = AmazonFormat(
    user="reviewerID",
    item="asin",
    timestamp="unixReviewTime",
    rating="overall",
    review_text="reviewText",
    review_title="summary",
    meta_item="asin",
    brand="brand",
    categories="category",
    description="description",
    main_category="main_cat",
)


def _join_text(values: pd.Series) -> pd.Series:
    """Lists of strings (descriptions, features) → one string; nulls → ''."""
    return values.map(lambda v: " ".join(v) if v is not None and len(v) else "").astype("str")


def _read_reviews(
    source: Source, fmt: AmazonFormat, with_reviews: bool
) -> tuple[pd.DataFrame, int]:
    fields: dict[str, pa.DataType] = {
        fmt.user: STR,
        fmt.item: STR,
        fmt.timestamp: pa.int64(),
        fmt.rating: pa.float64(),
    }
    if with_reviews:
        fields |= {fmt.review_text: STR, fmt.review_title: STR}
    raw = read_jsonl(source, fields)
    frame = pd.DataFrame(
        {
            "user_id": raw[fmt.user],
            "item_id": raw[fmt.item],
            "timestamp": raw[fmt.timestamp],
            "rating": raw[fmt.rating],
        }
    )
    if with_reviews:
        title = raw[fmt.review_title].fillna("").astype("str")
        text = raw[fmt.review_text].fillna("").astype("str")
        frame["review"] = (title + ". " + text).str.strip(". ")
    return finalize_events(frame, source), raw.attrs.get(REPLACED_LINES, 0)


def _read_meta(source: Source, fmt: AmazonFormat) -> tuple[pd.DataFrame, int]:
    # The 2018 files hold `description` sometimes as a list, sometimes as a string; read the
    # list form and let the error path say which line differs.
    fields: dict[str, pa.DataType] = {
        fmt.meta_item: STR,
        "title": STR,
        fmt.brand: STR,
        fmt.categories: STR_LIST,
        fmt.description: STR_LIST,
        fmt.main_category: STR,
    }
    raw = read_jsonl(source, fields)
    items = pd.DataFrame(
        {
            "item_id": raw[fmt.meta_item],
            "title": raw["title"].fillna("").astype("str"),
            "brand": raw[fmt.brand].fillna("").astype("str"),
            "categories": raw[fmt.categories].map(lambda v: [] if v is None else list(v)),
            "description": _join_text(raw[fmt.description]),
            "main_category": raw[fmt.main_category].fillna("").astype("str"),
        }
    )
    return finalize_items(items, source), raw.attrs.get(REPLACED_LINES, 0)


def load_amazon(
    reviews: str | Path,
    meta: str | Path | None = None,
    *,
    release: str = "2023",
    name: str | None = None,
    with_reviews: bool = False,
    unknown_items: str = "error",
    encoding_errors: EncodingErrors = "strict",
) -> Interactions:
    """Load an Amazon Reviews category: review file plus optional ``meta_*`` file.

    ``release`` is ``"2023"`` (items keyed by ``parent_asin``, timestamps in milliseconds) or
    ``"2018"`` (``asin``, seconds). ``with_reviews`` keeps review text for preference tasks.
    ``encoding_errors`` is ``strict`` (invalid UTF-8 fails) or ``replace`` (read as U+FFFD).
    """
    formats = {"2023": AMAZON_2023, "2018": AMAZON_2018}
    if release not in formats:
        raise DataError(f"unknown Amazon release {release!r}; use 2023 or 2018")
    fmt = formats[release]
    review_src = Source.from_path(reviews, encoding_errors)
    events, replaced = _read_reviews(review_src, fmt, with_reviews)
    items = None
    sources = [review_src.name]
    if meta is not None:
        meta_src = Source.from_path(meta, encoding_errors)
        items, meta_replaced = _read_meta(meta_src, fmt)
        replaced += meta_replaced
        sources.append(meta_src.name)
    events, items = link_items(events, items, review_src, unknown_items)
    stem = Path(reviews).name.split(".")[0]
    return Interactions(events, items, name or f"amazon{release}-{stem}", tuple(sources), replaced)
