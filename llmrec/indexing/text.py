"""Item text: one string per item from its fields, through a (sandboxed) Jinja template."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llmrec.templating import render

# Defaults per kind of catalog; pick one with ``text_template`` or write your own. Every field
# is optional (`is defined`): catalogs differ, and an item without a title is named by its id.
TEMPLATES = {
    "movies": (
        "{{ title if title is defined and title else item_id }}"
        "{% if year is defined and year %} ({{ year }}){% endif %}"
        "{% if genres is defined and genres %}. Genres: {{ genres | listjoin }}{% endif %}"
    ),
    "products": (
        "{{ title if title is defined and title else item_id }}"
        "{% if brand is defined and brand %}. Brand: {{ brand }}{% endif %}"
        "{% if categories is defined and categories %}. Categories: "
        "{{ categories | listjoin(' > ') }}{% endif %}"
        "{% if description is defined and description %}. "
        "{{ description | truncate(400, True, '') }}{% endif %}"
    ),
}


def default_template(columns: list[str]) -> str:
    """The built-in template that fits an item table's columns."""
    if "genres" in columns:
        return TEMPLATES["movies"]
    if "brand" in columns or "categories" in columns:
        return TEMPLATES["products"]
    if not [c for c in columns if c != "item_id"]:
        return "{{ item_id }}"
    return GENERIC


# Any other table: "name: value" for each non-empty field. The fields come in as one list
# (``FIELDS_VARIABLE``), so column names that are not identifiers ("release date") work too.
FIELDS_VARIABLE = "_fields"
GENERIC = (
    "{% for name, value in _fields if value %}{{ name }}: {{ value | listjoin }}"
    "{% if not loop.last %}. {% endif %}{% endfor %}"
)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or (not isinstance(value, list | tuple | str) and pd.isna(value)):
        return ""
    return value


def item_texts(items: pd.DataFrame, template: str | None = None) -> list[str]:
    """Render every item's text, in the item table's order.

    ``template`` is Jinja source or the name of a built-in (``movies``, ``products``); by
    default one is chosen from the columns. Field values are data: never evaluated.
    """
    source = TEMPLATES.get(template or "", template) or default_template(list(items.columns))
    texts = []
    for record in items.to_dict("records"):
        fields = {str(k): _plain(v) for k, v in record.items()}
        listed = [(k, v) for k, v in fields.items() if k != "item_id"]
        texts.append(render(source, {**fields, FIELDS_VARIABLE: listed}, "item text"))
    return texts
