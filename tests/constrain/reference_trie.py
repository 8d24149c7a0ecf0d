"""A plain-Python trie: the slow, obviously-correct reference the fast ItemTrie is tested against.

Nested dicts keyed by token id; built by *tokenising* every SID with the real tokenizer (not by
the fast path's lookup table), so the two constructions are independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

END = "__item__"


class ReferenceTrie:
    """Nested dicts of token ids; a leaf holds the item id under ``END``."""

    def __init__(self, sequences: Sequence[Sequence[int]], item_ids: Sequence[str]) -> None:
        self.root: dict[Any, Any] = {}
        for seq, item in zip(sequences, item_ids, strict=True):
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})
            node[END] = item

    @classmethod
    def from_sid_map(cls, sid_map: Any, tokenizer: Any, end_token_id: int) -> ReferenceTrie:
        """Tokenise every SID for real and append the end token."""
        seqs = [
            tokenizer(sid, add_special_tokens=False)["input_ids"] + [end_token_id]
            for sid in sid_map.all_sids()
        ]
        return cls(seqs, sid_map.item_ids)

    def node(self, prefix: Sequence[int]) -> dict[Any, Any] | None:
        """The node a prefix leads to, or None if it leaves the trie."""
        node = self.root
        for token in prefix:
            if token not in node:
                return None
            node = node[token]
        return node

    def allowed(self, prefix: Sequence[int]) -> set[int]:
        """Tokens that may follow ``prefix`` (empty at a leaf or off the trie)."""
        node = self.node(prefix)
        return set() if node is None else {t for t in node if t != END}

    def item(self, sequence: Sequence[int]) -> str | None:
        """The item a complete sequence names."""
        node = self.node(sequence)
        return None if node is None else node.get(END)

    def items_below(self, prefix: Sequence[int]) -> set[str]:
        """Every item whose sequence starts with ``prefix``."""
        node = self.node(prefix)
        out: set[str] = set()
        stack = [node] if node is not None else []
        while stack:
            n = stack.pop()
            for key, child in n.items():
                if key == END:
                    out.add(child)
                else:
                    stack.append(child)
        return out
