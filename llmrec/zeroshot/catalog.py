"""The catalog as a zero-shot model sees it: one unique answer string (``name``) per item, and the
fields prompts show.

An item's name is rendered from its fields (``{{ title }}`` by default). Names that collide —
equal after the backend's own normalisation: the same token sequence for a local model, the same
normalised text for an endpoint — get their year appended, then their item id, until every item
can be told apart (ML-100K has 18 titles listed twice, some the same film with one year).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmrec.indexing.text import item_texts
from llmrec.templating import render

# A batch of names → one key per name; names with equal keys cannot be told apart.
KeyFn = Callable[[list[str]], list[Hashable]]

_SPACE = re.compile(r"\s+")


def clean_name(text: str) -> str:
    """One line, single spaces: a name never holds the newline that ends an answer line."""
    return _SPACE.sub(" ", text).strip()


def unique_names(
    names: Sequence[str], years: Sequence[str], item_ids: Sequence[str], key: KeyFn
) -> list[str]:
    """``names`` made pairwise distinct under ``key``: duplicates get `` (year)``, then
    `` [item id]`` appended (both members of a collision, so neither looks canonical)."""
    out = [clean_name(n) or f"item {i}" for n, i in zip(names, item_ids, strict=True)]
    for suffix in ("year", "id"):
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for index, k in enumerate(key(out)):
            groups[k].append(index)
        clashing = [i for group in groups.values() if len(group) > 1 for i in group]
        if not clashing:
            return out
        for i in clashing:
            year = clean_name(str(years[i] or ""))
            if suffix == "id":
                out[i] = f"{out[i]} [{clean_name(str(item_ids[i]))}]"
            elif year and not out[i].endswith(f"({year})"):
                out[i] = f"{out[i]} ({year})"
    groups = defaultdict(list)
    for index, k in enumerate(key(out)):
        groups[k].append(index)
    clash = next((g for g in groups.values() if len(g) > 1), None)
    if clash is not None:
        raise ValueError(
            f"items {[item_ids[i] for i in clash]} cannot be told apart even with their ids "
            f"appended ({[out[i] for i in clash]})"
        )
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return value


@dataclass(frozen=True)
class ZeroShotCatalog:
    """Items in catalog order: ids, unique names, and the mappings prompts render."""

    item_ids: tuple[str, ...]
    names: tuple[str, ...]
    titles: tuple[str, ...]  # the raw title (what grounding matches besides the name)
    years: tuple[str, ...]
    views: tuple[dict[str, Any], ...]

    @classmethod
    def from_items(
        cls,
        items: pd.DataFrame,
        key: KeyFn,
        name_template: str = "{{ title }}",
        text_template: str | None = None,
    ) -> ZeroShotCatalog:
        """From a prepared item table (``item_id`` + fields); names unique under ``key``."""
        items = items.reset_index(drop=True)
        ids = items["item_id"].astype(str).tolist()
        records = [{str(k): _plain(v) for k, v in r.items()} for r in items.to_dict("records")]
        if "title" not in items.columns:
            for record, text in zip(records, item_texts(items, text_template), strict=True):
                record["title"] = text
        texts = item_texts(items, text_template)
        raw = [render(name_template, r, "name_template") for r in records]
        years = [str(r.get("year", "") or "") for r in records]
        names = unique_names(raw, years, ids, key)
        views = tuple(
            {**r, "name": n, "text": clean_name(t), "title": clean_name(str(r["title"]))}
            for r, n, t in zip(records, names, texts, strict=True)
        )
        return cls(
            tuple(ids),
            tuple(names),
            tuple(v["title"] for v in views),
            tuple(years),
            views,
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Item id → position."""
        return {item: i for i, item in enumerate(self.item_ids)}
