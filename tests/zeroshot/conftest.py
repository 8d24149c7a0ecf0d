"""Tiny local models and fuzzed catalogs for the zero-shot tests (no downloads)."""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import strategies as st

from llmrec.tokens import build_tiny_model, train_tokenizer
from tests.tiny_corpus import WORDS

CORPUS_EXTRA = ["Toy Story", "Cape Fear", "Heat Wave", "Ça ira", "naïve café", "你好世界"]

# Titles that stress a title trie: long shared prefixes, one title a prefix of another,
# duplicates (told apart by year, or by id when the year is the same too), unicode, special-token
# and Jinja text (data, never control), whitespace-only and very long titles.
SHARED = "The Remarkably Long Shared Beginning of Many Titles, Part "
FIXED = [
    "Heat",
    "Heat Wave",
    "Heat Wave II",
    "Toy Story",
    "Toy Story 2",
    "Cape Fear",
    "Ça ira",
    "naïve café",
    unicodedata.normalize("NFD", "naïve café"),  # the same text composed differently
    "你好世界",
    "<|im_end|>",
    "<|endoftext|> after",
    "</s>",
    "{{ 7*7 }}",
    "{% if x %}",
    "a\nb",
    "tab\there",
    "   ",
    "",
    "item 3",
]


@st.composite
def item_tables(draw: st.DrawFn, max_items: int = 14) -> pd.DataFrame:
    """An item table (item_id, title, year, genres) of adversarial titles."""
    atom = st.one_of(
        st.sampled_from(FIXED),
        st.text(st.characters(exclude_categories=("Cs", "Co", "Cn")), min_size=0, max_size=12),
        st.builds(lambda s: SHARED + s, st.text(alphabet="abc 12", max_size=4)),
        st.builds(lambda s: "Long " * 60 + s, st.text(alphabet="xyz", max_size=3)),
    )
    titles = draw(st.lists(atom, min_size=1, max_size=max_items))
    if draw(st.booleans()):
        titles.append(titles[0] + " Returns")  # the first title is a prefix of this one
    if draw(st.booleans()):
        titles.append(titles[-1])  # a duplicate
    years = draw(
        st.lists(st.sampled_from(["", "1995", "1996"]), min_size=len(titles), max_size=len(titles))
    )
    return pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(len(titles))],
            "title": titles,
            "year": years,
            "genres": [["Drama"]] * len(titles),
        }
    )


def corpus() -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)] + CORPUS_EXTRA * 20


@pytest.fixture(
    scope="session",
    params=[("bpe", "qwen2"), ("sentencepiece", "llama")],
    ids=["bpe-qwen2", "spm-llama"],
)
def stack(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """A locally trained tokenizer (with a chat template) and a random tiny causal LM."""
    kind, arch = request.param
    tokenizer = train_tokenizer(corpus(), vocab_size=300, kind=kind)
    model = build_tiny_model(
        tokenizer, arch=arch, hidden_size=64, num_heads=2, num_layers=1, seed=1
    ).eval()
    return tokenizer, model
