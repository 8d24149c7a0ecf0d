"""What the HTTP app serves from: a catalog (ids, titles, users' histories) and a backend.

A backend answers ``await recommend(history, k, exclude, adapter)`` with (item, score) pairs,
best first. ``VLLMBackend`` runs one beam search per request on an ``AsyncLLM``: concurrent
requests' beam steps land in the same engine batches. ``HFBackend`` gets the same chance with a
micro-batcher: requests arriving within ``max_wait_ms`` of each other (up to ``max_batch``) go
through one ``HFRecommender.score_beam`` call, run in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.vllm_beam import Search, beam_search_async, greedy_async

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the server must refuse, with its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        """``status`` is a 4xx code (503 when the backend itself failed)."""
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServingCatalog:
    """Item ids (trie order), titles, and the known users' histories (oldest first)."""

    item_ids: tuple[str, ...]
    titles: dict[str, str] = field(default_factory=dict)
    histories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @functools.cached_property
    def item_set(self) -> frozenset[str]:
        """The item ids, for membership tests."""
        return frozenset(self.item_ids)

    @classmethod
    def from_run(cls, run: str | Path, item_ids: Sequence[str]) -> ServingCatalog:
        """Titles from ``<run>/data/items.parquet``; histories from its split (all parts)."""
        from llmrec.data.prepare import PreparedData

        prepared = PreparedData.load(run)
        items = prepared.items.astype({"item_id": str})
        titles = {}
        if "title" in items.columns:
            titles = dict(zip(items["item_id"], items["title"].astype(str), strict=True))
        histories = {}
        cases = prepared.split.cases("test")
        for user, history, target in zip(
            cases["user_id"], cases["history"], cases["target"], strict=True
        ):
            histories[str(user)] = (*(str(i) for i in history), *_targets(target))
        return cls(tuple(item_ids), titles, histories)


def _targets(target: Any) -> tuple[str, ...]:
    if isinstance(target, str):
        return (target,)
    return tuple(str(t) for t in target) if target is not None else ()


class Backend(Protocol):
    """Top-k (item, score) pairs for one history."""

    name: str

    @property
    def adapters(self) -> Collection[str]:
        """Adapter names a request may ask for."""
        ...

    async def recommend(
        self,
        history: Sequence[str],
        k: int,
        exclude: Collection[str],
        adapter: str | None,
        num_beams: int | None = None,
    ) -> list[tuple[str, float]]:
        """Best first, at most ``k``, never an item of ``exclude``; beam width
        ``max(num_beams or the backend's, k)``."""
        ...

    async def close(self) -> None:
        """Release the engine."""
        ...


@dataclass
class VLLMBackend:
    """Constrained beam search on an ``AsyncLLM``, one adapter per request at most."""

    engine: Any
    prompts: Any  # PromptBuilder, or anything with encode(history) -> token ids
    trie: ItemTrie
    trie_path: str
    num_beams: int = 20
    lora: dict[str, Any] = field(default_factory=dict)  # adapter name -> LoRARequest
    name: str = "vllm"

    def __post_init__(self) -> None:
        self._index = {item: i for i, item in enumerate(self.trie.item_ids)}

    @property
    def adapters(self) -> Collection[str]:
        """Names a request may ask for."""
        return self.lora.keys()

    async def recommend(
        self,
        history: Sequence[str],
        k: int,
        exclude: Collection[str],
        adapter: str | None,
        num_beams: int | None = None,
    ) -> list[tuple[str, float]]:
        """One beam search; its steps share engine batches with every other request's."""
        width = min(max(num_beams or self.num_beams, k), len(self.trie.item_ids))
        banned = sorted(self._index[i] for i in exclude if i in self._index)
        prompt = self.prompts.encode(history)
        lora = self.lora[adapter] if adapter else None
        if width == 1:  # one request decodes the whole item: cheaper than a beam of one
            found = await greedy_async(self.engine, prompt, self.trie, self.trie_path, banned, lora)
        else:
            search = Search(prompt, width, banned)
            found = await beam_search_async(self.engine, search, self.trie, self.trie_path, lora)
        return [(self.trie.item_ids[i], s) for i, s in found[:k]]

    async def close(self) -> None:
        """Shut the engine down."""
        self.engine.shutdown()


@dataclass
class _Pending:
    history: Sequence[str]
    width: int
    exclude: Collection[str]
    future: asyncio.Future[list[tuple[str, float]]]


@dataclass
class HFBackend:
    """``HFRecommender`` beam search behind a micro-batcher (one worker thread)."""

    recommender: Any  # HFRecommender
    num_beams: int = 20
    max_batch: int = 16
    max_wait_ms: float = 5.0
    name: str = "hf"
    adapters: Collection[str] = ()

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-batch")

    async def recommend(
        self,
        history: Sequence[str],
        k: int,
        exclude: Collection[str],
        adapter: str | None,
        num_beams: int | None = None,
    ) -> list[tuple[str, float]]:
        """Queue the request; the batcher answers it with the others that arrive with it."""
        if adapter:
            raise RequestError(400, "the HF backend serves no adapters; use the vLLM backend")
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        width = min(max(num_beams or self.num_beams, k), len(self.recommender.trie.item_ids))
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(history, width, exclude, future))
        return (await future)[:k]

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait_ms / 1000
            while len(batch) < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            # One generate call needs one beam width: serve each width as its own batch.
            for width in sorted({p.width for p in batch}):
                group = [p for p in batch if p.width == width]
                try:
                    ranked = await loop.run_in_executor(
                        self._pool,
                        self.recommender.score_beam,
                        [p.history for p in group],
                        width,
                        [p.exclude for p in group],
                    )
                except Exception as err:  # answer every waiting request, keep the batcher alive
                    for p in group:
                        p.future.set_exception(err)
                    continue
                for p, row in zip(group, ranked, strict=True):
                    p.future.set_result(row)

    async def close(self) -> None:
        """Stop the batcher."""
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=False)
