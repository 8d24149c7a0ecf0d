"""``SemanticIdMap``: item ↔ codes ↔ token strings, saved as a small versioned JSON file.

The file holds no timestamps: equal content gives equal bytes, and its ``content_hash`` (over
everything else in the file) is the artifact's identity. Loading checks the format version and
recomputes the hash, so a hand-edited or truncated map fails loudly instead of silently
renumbering items (the complaint behind "SIDs are inconsistent after a reload" elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.errors import UserError
from llmrec.io import write_text_atomic

FORMAT = "llmrec.semantic_id_map"
VERSION = 1
DEFAULT_PREFIXES = ("a", "b", "c", "d", "e", "f", "g", "h")
DEFAULT_TOKEN_FORMAT = "<{prefix}_{code}>"


class SemanticIdError(UserError):
    """A semantic-ID map is malformed, of another version, or does not match its hash."""


@dataclass(frozen=True, eq=False)
class SemanticIdMap:
    """Every item's code tuple, and how codes are written as tokens (``<a_12><b_3><c_200>``)."""

    item_ids: tuple[str, ...]
    codes: np.ndarray  # int64 [n_items, levels]
    codebook_sizes: tuple[int, ...]
    prefixes: tuple[str, ...] = DEFAULT_PREFIXES
    token_format: str = DEFAULT_TOKEN_FORMAT
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes, dtype=np.int64)
        object.__setattr__(self, "codes", codes)
        if codes.ndim != 2 or codes.shape[0] != len(self.item_ids):
            raise SemanticIdError(
                f"codes must be [n_items={len(self.item_ids)}, levels], got {list(codes.shape)}"
            )
        if len(self.codebook_sizes) != self.levels:
            raise SemanticIdError(f"{self.levels} levels but {len(self.codebook_sizes)} sizes")
        if len(self.prefixes) < self.levels or len(set(self.prefixes[: self.levels])) < self.levels:
            raise SemanticIdError(f"need {self.levels} distinct prefixes, got {self.prefixes}")
        if "{prefix}" not in self.token_format or "{code}" not in self.token_format:
            raise SemanticIdError("token_format must contain {prefix} and {code}")
        if codes.size and (codes.min() < 0 or (codes >= np.array(self.codebook_sizes)).any()):
            raise SemanticIdError("a code is outside its level's codebook")
        if len(set(self.item_ids)) != len(self.item_ids):
            raise SemanticIdError("item ids repeat")
        if len(self.item_ids) and len(np.unique(codes, axis=0)) != len(self.item_ids):
            raise SemanticIdError("two items share a semantic ID; resolve collisions first")

    # ---- lookups ------------------------------------------------------------------------

    @property
    def levels(self) -> int:
        """Codes per item."""
        return int(self.codes.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    @cached_property
    def _row_of_item(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    @cached_property
    def _item_of_codes(self) -> dict[tuple[int, ...], str]:
        return {
            tuple(int(c) for c in row): item
            for row, item in zip(self.codes, self.item_ids, strict=True)
        }

    def codes_of(self, item_id: str) -> tuple[int, ...]:
        """The code tuple of an item."""
        try:
            return tuple(int(c) for c in self.codes[self._row_of_item[item_id]])
        except KeyError:
            raise KeyError(f"item {item_id!r} has no semantic ID") from None

    def item_of_codes(self, codes: Sequence[int]) -> str | None:
        """The item with this code tuple, or None."""
        return self._item_of_codes.get(tuple(int(c) for c in codes))

    def token(self, level: int, code: int) -> str:
        """One token string, e.g. ``<b_3>``."""
        return self.token_format.format(prefix=self.prefixes[level], code=int(code))

    def tokens_of(self, item_id: str) -> list[str]:
        """An item's token strings, one per level."""
        return [self.token(lvl, c) for lvl, c in enumerate(self.codes_of(item_id))]

    def sid(self, item_id: str) -> str:
        """An item's SID as one string, e.g. ``<a_12><b_3><c_200>``."""
        return "".join(self.tokens_of(item_id))

    def all_sids(self) -> list[str]:
        """Every item's SID string, in ``item_ids`` order."""
        return ["".join(self.token(lvl, c) for lvl, c in enumerate(row)) for row in self.codes]

    def vocabulary(self) -> list[str]:
        """Every token a SID can use: each level's whole codebook (so new items fit later)."""
        return [
            self.token(lvl, c) for lvl, size in enumerate(self.codebook_sizes) for c in range(size)
        ]

    @cached_property
    def _token_pattern(self) -> re.Pattern[str]:
        fmt = re.escape(self.token_format)
        fmt = fmt.replace(re.escape("{prefix}"), r"(?P<prefix>[^\W\d_]+)")
        return re.compile(fmt.replace(re.escape("{code}"), r"(?P<code>\d+)"))

    def parse(self, text: str) -> tuple[int, ...]:
        """SID text → code tuple; raises if it is not exactly one well-formed SID."""
        codes, pos = [], 0
        for level in range(self.levels):
            match = self._token_pattern.match(text, pos)
            if not match or match.group("prefix") != self.prefixes[level]:
                raise SemanticIdError(f"{text!r} is not a {self.levels}-level SID")
            codes.append(int(match.group("code")))
            pos = match.end()
        if pos != len(text):
            raise SemanticIdError(f"{text!r} has text after the SID")
        return tuple(codes)

    def strip_tokens(self, text: str) -> str:
        """``text`` with every SID token removed (e.g. to train a tokenizer on the rest)."""
        return self._token_pattern.sub("", text)

    def item_of_sid(self, text: str) -> str | None:
        """The item named by SID text, or None if no item has it."""
        return self.item_of_codes(self.parse(text))

    # ---- growing the catalog --------------------------------------------------------------

    def with_items(
        self, item_ids: Iterable[str], codes: np.ndarray, metadata: dict[str, Any] | None = None
    ) -> SemanticIdMap:
        """A new map with more items appended; existing items keep their SIDs."""
        new_ids = tuple(item_ids)
        return SemanticIdMap(
            self.item_ids + new_ids,
            np.concatenate(
                [self.codes, np.asarray(codes, dtype=np.int64).reshape(-1, self.levels)]
            ),
            self.codebook_sizes,
            self.prefixes,
            self.token_format,
            {**self.metadata, **(metadata or {})},
        )

    # ---- the file -------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "levels": self.levels,
            "codebook_sizes": list(self.codebook_sizes),
            "prefixes": list(self.prefixes[: self.levels]),
            "token_format": self.token_format,
            "metadata": self.metadata,
            "items": [
                [item, [int(c) for c in row]]
                for item, row in zip(self.item_ids, self.codes, strict=True)
            ],
        }

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical content: the map's identity."""
        return _hash(self._body())

    def to_json(self) -> str:
        """The file's text: one item per line, so diffs of two maps stay readable."""
        body = self._body()
        items = body.pop("items")
        head = json.dumps(
            {**body, "content_hash": _hash({**body, "items": items})}, sort_keys=True, indent=1
        )
        rows = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in items)
        return head[:-2] + ',\n "items": [\n' + rows + "\n ]\n}\n"

    def save(self, path: str | Path) -> None:
        """Write the map atomically."""
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SemanticIdMap:
        """Read a map, checking its format, version and content hash."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SemanticIdError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SemanticIdError(f"{path}: not a semantic-ID map")
        if data.get("version") != VERSION:
            raise SemanticIdError(
                f"{path}: version {data.get('version')}; this llmrec reads version {VERSION}"
            )
        stored = data.pop("content_hash", None)
        if stored != _hash(data):
            raise SemanticIdError(f"{path}: content hash mismatch (edited or corrupted)")
        items = data["items"]
        codes = np.array([c for _, c in items], dtype=np.int64).reshape(len(items), data["levels"])
        return cls(
            tuple(str(i) for i, _ in items),
            codes,
            tuple(data["codebook_sizes"]),
            tuple(data["prefixes"]),
            data["token_format"],
            data["metadata"],
        )


def _hash(body: dict[str, Any]) -> str:
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
