"""The title trie: every item's name tokenised by the model's own tokenizer, ending with a
separator token, in the same ``ItemTrie`` the SID models decode with.

Names are tokenised on their own (an answer line starts a fresh line, so that is how a title
follows the prompt), with special-token text split like any other text: a title that reads
``<|im_end|>`` is data, and cannot end an answer early. Two names with one token sequence
cannot both be in a trie; ``ZeroShotCatalog`` told them apart already using ``token_key``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from llmrec.constrain.trie import ItemTrie
from llmrec.errors import UserError
from llmrec.zeroshot.catalog import KeyFn, ZeroShotCatalog


def tokenize_names(tokenizer: Any, names: Sequence[str]) -> list[list[int]]:
    """Token ids of each name on its own (no special tokens added, none parsed from the text)."""
    if not names:
        return []
    out = tokenizer(list(names), add_special_tokens=False, split_special_tokens=True)
    return [list(ids) for ids in out["input_ids"]]


def token_key(tokenizer: Any) -> KeyFn:
    """Names are told apart by their token sequences."""

    def key(names: list[str]) -> list[Hashable]:
        return [tuple(ids) for ids in tokenize_names(tokenizer, names)]

    return key


def separator_token_id(tokenizer: Any, separator: str, eos_token_id: int) -> int:
    """The one token ``separator`` becomes after a title (``"eos"``: ``eos_token_id``)."""
    if separator == "eos":
        return int(eos_token_id)
    probe = "x"  # any short text: we look at what the separator adds after it
    head = tokenize_names(tokenizer, [probe])[0]
    full = tokenize_names(tokenizer, [probe + separator])[0]
    if full[: len(head)] != head or len(full) != len(head) + 1:
        raise UserError(
            f"the separator {separator!r} is not one token after a title in this tokenizer "
            f"({full[len(head) :]}); choose another or separator=eos",
            field="separator",
        )
    return int(full[-1])


def title_trie(catalog: ZeroShotCatalog, tokenizer: Any, end_token_id: int) -> ItemTrie:
    """An ``ItemTrie`` over the catalog's names, each followed by ``end_token_id``."""
    seqs = tokenize_names(tokenizer, catalog.names)
    for item, name, seq in zip(catalog.item_ids, catalog.names, seqs, strict=True):
        if not seq or end_token_id in seq:
            raise UserError(
                f"item {item!r}: its name {name!r} tokenises to {seq}, which "
                + ("is empty" if not seq else f"holds the separator token {end_token_id}")
                + "; choose another separator",
                field="separator",
            )
    width = max(len(s) for s in seqs) + 1
    padded = np.full((len(seqs), width), -1, dtype=np.int64)
    for row, seq in enumerate(seqs):
        padded[row, : len(seq)] = seq
        padded[row, len(seq)] = end_token_id
    return ItemTrie.from_sequences(padded, catalog.item_ids, end_token_id)
