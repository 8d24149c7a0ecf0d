"""Item text: one string per item from its fields, through a (sandboxed) Jinja template."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llmrec.templating import render

# Defaults per kind of catalog; pick one with ``text_template`` or write your own.
TEMPLATES = {
    "movies": (
        "{{ title }}{% if year %} ({{ year }}){% endif %}"
        "{% if genres %}. Genres: {{ genres | listjoin }}{% endif %}"
    ),
    "products": (
        "{{ title }}{% if brand %}. Brand: {{ brand }}{% endif %}"
        "{% if categories %}. Categories: {{ categories | listjoin(' > ') }}{% endif %}"
        "{% if description %}. {{ description | truncate(400, True, '') }}{% endif %}"
    ),
}


def default_template(columns: list[str]) -> str:
    """The built-in template that fits an item table's columns."""
    if "genres" in columns:
        return TEMPLATES["movies"]
    if "brand" in columns or "categories" in columns:
        return TEMPLATES["products"]
    fields = [c for c in columns if c != "item_id"]
    if not fields:
        return "{{ item_id }}"
    return ". ".join(f"{c}: {{{{ {c} | listjoin }}}}" for c in fields)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return value


def item_texts(items: pd.DataFrame, template: str | None = None) -> list[str]:
    """Render every item's text, in the item table's order.

    ``template`` is Jinja source or the name of a built-in (``movies``, ``products``); by
    default one is chosen from the columns. Field values are data: never evaluated.
    """
    source = TEMPLATES.get(template or "", template) or default_template(list(items.columns))
    records = items.to_dict("records")
    return [render(source, {str(k): _plain(v) for k, v in r.items()}, "item text") for r in records]
