"""The title trie: unique names over fuzzed catalogs, and the very ItemTrie the SID models use,
checked against the plain-Python reference trie."""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmrec.constrain.trie import ItemTrie
from llmrec.errors import UserError
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.tokens import add_sid_tokens, train_tokenizer
from llmrec.zeroshot.catalog import ZeroShotCatalog, unique_names
from llmrec.zeroshot.titles import separator_token_id, title_trie, token_key
from tests.constrain.reference_trie import ReferenceTrie
from tests.zeroshot.conftest import corpus, item_tables

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _separator(tokenizer: Any) -> int:
    return separator_token_id(tokenizer, "\n", tokenizer.eos_token_id)


@FUZZ
@given(item_tables(), st.integers(0, 2**31))
def test_title_trie_equals_the_reference(
    stack: tuple[Any, Any], items: pd.DataFrame, seed: int
) -> None:
    tokenizer, _ = stack
    end = _separator(tokenizer)
    catalog = ZeroShotCatalog.from_items(items, token_key(tokenizer))
    assert len(set(catalog.names)) == len(catalog)  # told apart
    trie = title_trie(catalog, tokenizer, end)
    assert type(trie) is ItemTrie  # the SID models' trie, not a look-alike
    # The reference tokenises each name on its own, one call per name.
    seqs = [
        list(tokenizer.encode(n, add_special_tokens=False, split_special_tokens=True)) + [end]
        for n in catalog.names
    ]
    ref = ReferenceTrie(seqs, catalog.item_ids)
    plain = ItemTrie(**_fields(trie), dense=False)  # the CSR path alone
    rng = np.random.default_rng(seed)
    vocab = len(tokenizer)
    for seq in seqs:
        for cut in sorted({0, len(seq) - 1, int(rng.integers(0, len(seq)))}):
            prefix = seq[:cut]
            gen = torch.tensor([prefix], dtype=torch.long).reshape(1, cut)
            scores = torch.from_numpy(rng.normal(size=(1, vocab)).astype(np.float32))
            for variant in (trie, plain):
                masked = variant.constrain(scores.clone(), gen)
                finite = set(torch.nonzero(torch.isfinite(masked[0])).squeeze(1).tolist())
                assert finite == ref.allowed(prefix), (catalog.names, prefix)
    full = torch.tensor([s + [end] * (trie.depth - len(s)) for s in seqs])  # end-padded
    assert trie.items_of(full) == list(catalog.item_ids)
    for seq, item in zip(seqs, catalog.item_ids, strict=True):
        assert ref.item(seq) == item


def _fields(trie: ItemTrie) -> dict[str, Any]:
    names = ("edge_key", "edge_token", "edge_child", "node_offset", "node_item")
    return {
        **{n: getattr(trie, n) for n in names},
        "key_base": trie.key_base,
        "max_children": trie.max_children,
        "item_ids": trie.item_ids,
        "end_token_id": trie.end_token_id,
    }


def test_sid_strings_as_titles_give_the_sid_trie() -> None:
    """One implementation: SID strings fed to the title trie give from_sid_map's tensors."""
    tokenizer = train_tokenizer(corpus(), vocab_size=300)
    codes = np.array([[0, 1, 2], [0, 1, 3], [1, 0, 0], [2, 2, 2]])
    sid_map = SemanticIdMap(("a", "b", "c", "d"), codes, (4, 4, 4))
    add_sid_tokens(tokenizer, sid_map)
    eos = tokenizer.eos_token_id
    items = pd.DataFrame({"item_id": list(sid_map.item_ids), "title": sid_map.all_sids()})
    catalog = ZeroShotCatalog.from_items(items, token_key(tokenizer))
    by_title = title_trie(catalog, tokenizer, eos)
    by_sid = ItemTrie.from_sid_map(sid_map, tokenizer, eos)
    for name in ("edge_key", "edge_token", "edge_child", "node_offset", "node_item"):
        assert torch.equal(getattr(by_title, name), getattr(by_sid, name)), name
    assert by_title.max_children == by_sid.max_children


def test_duplicates_get_the_year_then_the_id() -> None:
    names = unique_names(
        ["Cape Fear", "Cape Fear", "Chasing Amy", "Chasing Amy", "Heat", " Heat\n"],
        ["1962", "1991", "1997", "1997", "1995", ""],
        ["1", "2", "3", "4", "5", "6"],
        key=lambda ns: list(ns),
    )
    assert names == [
        "Cape Fear (1962)",
        "Cape Fear (1991)",
        "Chasing Amy (1997) [3]",
        "Chasing Amy (1997) [4]",
        "Heat (1995)",  # the year alone tells these two apart
        "Heat",
    ]


def test_names_equal_after_tokenisation_are_told_apart(stack: tuple[Any, Any]) -> None:
    tokenizer, _ = stack
    composed = "naïve café"
    decomposed = unicodedata.normalize("NFD", composed)
    items = pd.DataFrame({"item_id": ["x", "y"], "title": [composed, decomposed]})
    catalog = ZeroShotCatalog.from_items(items, token_key(tokenizer))
    same = tokenizer.encode(composed, add_special_tokens=False) == tokenizer.encode(
        decomposed, add_special_tokens=False
    )
    assert (catalog.names != (composed, decomposed)) == same
    title_trie(catalog, tokenizer, _separator(tokenizer))  # builds: sequences are unique


def test_separator_must_be_one_token(stack: tuple[Any, Any]) -> None:
    tokenizer, _ = stack
    assert separator_token_id(tokenizer, "eos", 7) == 7
    with pytest.raises(UserError, match="not one token"):
        separator_token_id(tokenizer, "\n\n--- end of list ---\n", tokenizer.eos_token_id)
    # A separator that titles contain cannot end them.
    items = pd.DataFrame({"item_id": ["x"], "title": ["the user"]})
    catalog = ZeroShotCatalog.from_items(items, token_key(tokenizer))
    inside = tokenizer.encode("the user", add_special_tokens=False)[-1]
    with pytest.raises(UserError, match="separator"):
        title_trie(catalog, tokenizer, inside)
