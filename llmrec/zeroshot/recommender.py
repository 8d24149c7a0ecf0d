"""``ZeroShotRecommender``: a prompted LLM behind the ``Recommender`` protocol.

Per user, a prompt from ``prompts/`` is rendered from the history's item text. When items
beyond the history are excluded and few enough remain (the evaluation's candidate protocol
excludes every non-candidate), the remaining items are the candidates: listed in the candidates prompt, in a
seeded order, and the only items an answer may name. A backend answers:

* local (HF, vLLM): decoding constrained to the title trie, so every answer is an item
  (``method="trie"``), distinct, and never an excluded one;
* endpoint: free text, each line grounded to an item (``grounding.py``); lines naming no item,
  an excluded one or a repeat are dropped, and slots left empty are padded with ``""``.

Every answer line is counted in ``stats`` (by grounding method and fate), from which the
validity rate is read: the share of lines that name a usable item.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmrec.instruct.prompt import PromptFormat
from llmrec.recommend.base import Users, pad_rows
from llmrec.zeroshot.catalog import ZeroShotCatalog
from llmrec.zeroshot.endpoint import ChatPrompt, EndpointClient
from llmrec.zeroshot.grounding import Grounder, answer_lines
from llmrec.zeroshot.prompts import ZeroShotPrompt


@dataclass(frozen=True)
class Request:
    """One user's prompt and what their answer may name."""

    system: str | None
    text: str
    exclude: frozenset[str]
    candidates: tuple[str, ...] | None  # candidate mode: the only items allowed


@dataclass(frozen=True)
class Answer:
    """One answer line: the item it names (None: none), how it was matched, its score."""

    line: str
    item: str | None
    method: str
    score: float


class Backend(Protocol):
    """Answers prompts with item lines."""

    def fits(self, system: str | None, text: str) -> bool:
        """Whether a prompt fits the model's context."""
        ...

    def answer(self, requests: Sequence[Request], k: int) -> list[list[Answer]]:
        """Per request, its answer lines in order."""
        ...


@dataclass
class LocalBackend:
    """A local model's ranker (``HFRecommender``, ``VLLMRecommender`` or ``ListDecoder`` over
    the title trie, fed prompt token ids)."""

    ranker: Any
    tokenizer: Any
    catalog: ZeroShotCatalog
    conversational: bool
    budget: int | None = None  # longest prompt in tokens
    candidate_scorer: Any = None  # a CandidateScorer: candidate lists ranked exactly

    def encode(self, system: str | None, text: str) -> list[int]:
        """Prompt token ids (chat template or plain)."""
        return PromptFormat(self.conversational, system).encode(self.tokenizer, text)

    def fits(self, system: str | None, text: str) -> bool:
        """Whether the prompt leaves room for the longest title."""
        return self.budget is None or len(self.encode(system, text)) <= self.budget

    def answer(self, requests: Sequence[Request], k: int) -> list[list[Answer]]:
        """Titles decoded under the trie: items by construction."""
        rows = [tuple(self.encode(r.system, r.text)) for r in requests]
        found: list[list[tuple[str, float]] | None] = [None] * len(requests)
        if self.candidate_scorer is not None:
            for n, (r, ids) in enumerate(zip(requests, rows, strict=True)):
                if r.candidates is not None:
                    found[n] = self.candidate_scorer.rank(ids, r.candidates, k)
        rest = [n for n, f in enumerate(found) if f is None]
        if rest:
            exclude = [requests[n].exclude for n in rest]
            items, scores = self.ranker.recommend([rows[n] for n in rest], k, exclude)
            for n, row, srow in zip(rest, items, scores, strict=True):
                found[n] = [(i, float(s)) for i, s in zip(row, srow, strict=True) if i]
        index = self.catalog.index
        # With every item excluded the constraint can only fall back to an excluded one (better
        # than an invalid token): that is the decoder's padding, not an answer.
        return [
            [
                Answer(self.catalog.names[index[i]], i, "trie", s)
                for i, s in pairs or ()
                if i not in r.exclude
            ]
            for r, pairs in zip(requests, found, strict=True)
        ]


@dataclass
class EndpointBackend:
    """An OpenAI-compatible endpoint; answers grounded line by line."""

    client: EndpointClient
    grounder: Grounder

    def fits(self, system: str | None, text: str) -> bool:
        """The endpoint says so itself when a prompt is too long."""
        return True

    def answer(self, requests: Sequence[Request], k: int) -> list[list[Answer]]:
        """Each answer's lines, grounded (candidates preferred where a match ties)."""
        texts = self.client.complete_many([ChatPrompt(r.system, r.text) for r in requests])
        index = self.grounder.catalog.index
        out = []
        for request, text in zip(requests, texts, strict=True):
            allowed = None if request.candidates is None else {index[i] for i in request.candidates}
            grounded = self.grounder.ground(answer_lines(text), allowed)
            out.append([Answer(g.line, g.item, g.method, g.score) for g in grounded])
        return out


@dataclass
class GroundingStats:
    """Answer lines counted by grounding method and by fate."""

    methods: Counter[str] = field(default_factory=Counter)
    fates: Counter[str] = field(default_factory=Counter)  # used, excluded, not_candidate, …

    @property
    def lines(self) -> int:
        """Answer lines seen."""
        return sum(self.methods.values())

    @property
    def validity(self) -> float:
        """Share of answer lines that named a usable item (in the catalog, allowed, new)."""
        valid = self.fates["used"] + self.fates["beyond_k"]
        return valid / self.lines if self.lines else 1.0

    def as_dict(self) -> dict[str, Any]:
        """For reports and JSON."""
        return {
            "lines": self.lines,
            "validity": round(self.validity, 4),
            "grounded": round(1 - self.methods["none"] / self.lines, 4) if self.lines else 1.0,
            "methods": dict(self.methods),
            "fates": dict(self.fates),
        }


@dataclass
class ZeroShotRecommender:
    """Prompts → backend → grounded items, behind the ``Recommender`` protocol."""

    catalog: ZeroShotCatalog
    backend: Backend
    prompt: ZeroShotPrompt
    candidates_prompt: ZeroShotPrompt
    max_history: int = 10
    candidate_limit: int = 100
    item_noun: str = "item"
    items_noun: str = "items"
    seed: int = 0
    stats: GroundingStats = field(default_factory=GroundingStats)
    last: list[tuple[Request, list[Answer]]] = field(default_factory=list)

    def request(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> Request:
        """The prompt for one user (candidate mode when few items remain allowed)."""
        index = self.catalog.index
        excluded = frozenset(i for i in exclude if i in index)
        candidates = None
        # Candidate mode: items beyond the history were excluded (the evaluation's candidate
        # protocol excludes every non-candidate) and few enough remain to list them.
        beyond_history = bool(excluded - set(history))
        if beyond_history and len(self.catalog) - len(excluded) <= self.candidate_limit:
            allowed = [i for i in self.catalog.item_ids if i not in excluded]
            # Seeded per history: the order is fixed for a user, and no position favours the
            # held-out item across users.
            rng = np.random.default_rng([self.seed, zlib.crc32("\x1f".join(history).encode())])
            candidates = tuple(allowed[j] for j in rng.permutation(len(allowed)))
        template = self.prompt if candidates is None else self.candidates_prompt
        views = [self.catalog.views[index[i]] for i in history if i in index]
        views = views[-self.max_history :]
        shown = [self.catalog.views[index[i]] for i in candidates or ()]
        k_shown = min(k, len(candidates)) if candidates is not None else k
        while True:
            text = template.render(views, k_shown, shown, self.item_noun, self.items_noun)
            if len(views) <= 1 or self.backend.fits(template.system, text):
                return Request(template.system, text, excluded, candidates)
            views = views[1:]  # the oldest item goes first

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k catalog items per history (see ``Recommender``); empty slots are ``""``."""
        requests = [
            self.request(h, k, exclude[u] if exclude else ()) for u, h in enumerate(histories)
        ]
        answers = self.backend.answer(requests, k)
        items: list[list[str]] = []
        scores: list[list[float]] = []
        self.last = list(zip(requests, answers, strict=True))
        for request, lines in self.last:
            allowed = None if request.candidates is None else set(request.candidates)
            row: list[str] = []
            row_scores: list[float] = []
            for answer in lines:
                self.stats.methods[answer.method] += 1
                fate = self._fate(answer.item, request, allowed, row, k)
                self.stats.fates[fate] += 1
                if fate == "used":
                    assert answer.item is not None
                    # A grounded line's score is its match quality, not a preference: the
                    # answer's order is the ranking, so its scores fall by one per slot.
                    trie = answer.method == "trie"
                    row_scores.append(answer.score if trie else -float(len(row)))
                    row.append(answer.item)
            items.append(row)
            scores.append(row_scores)
        return pad_rows(items, scores, k)

    @staticmethod
    def _fate(
        item: str | None, request: Request, allowed: set[str] | None, row: list[str], k: int
    ) -> str:
        if item is None:
            return "ungrounded"
        if allowed is not None and item not in allowed:
            return "not_candidate"  # (excluded too: the candidate protocol excludes the rest)
        if item in request.exclude:
            return "excluded"
        if item in row:
            return "repeated"
        return "used" if len(row) < k else "beyond_k"
