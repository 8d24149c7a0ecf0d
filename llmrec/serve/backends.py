"""What the HTTP app serves from: a catalog, and a backend that adapts ``Recommender`` s.

There is no serving protocol of its own: ``RecommenderBackend`` holds ordinary recommenders
(HF or vLLM, a per-user router, Pop...) by adapter name and answers the app one request at a
time while handing the models batches. Requests that arrive within ``max_wait_ms`` of each
other (up to ``max_batch``) and ask for the same model and beam width go through one
``Recommender.recommend`` call in a worker thread — HF: one constrained ``generate``; vLLM:
every beam of every request in one rollout search on the engine. A batch that fails answers its
requests with the error only after each was tried alone (one bad request never fails the
others; the app turns an error into a 503), and the batcher keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec.data.split import HistoryRule
from llmrec.recommend.base import Recommender

logger = logging.getLogger(__name__)

DEFAULT = ""  # the models key of the default (or per-user routed) model


class RequestError(Exception):
    """A request the server must refuse, with its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        """``status`` is a 4xx code (503 when the backend itself failed)."""
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServingCatalog:
    """Item ids (trie order), titles, and the known users' histories (oldest first) under the
    server's history rule (``rule``) and, in ``by_rule``, under the others a request may ask for."""

    item_ids: tuple[str, ...]
    titles: dict[str, str] = field(default_factory=dict)
    histories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rule: str = "all"
    by_rule: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    @functools.cached_property
    def item_set(self) -> frozenset[str]:
        """The item ids, for membership tests."""
        return frozenset(self.item_ids)

    def history(self, user: str, rule: str | None = None) -> tuple[str, ...] | None:
        """A known user's history under ``rule`` (default: the server's), None if unknown."""
        table = self.histories if rule in (None, self.rule) else self.by_rule.get(rule or "", {})
        return table.get(user)

    @classmethod
    def from_run(
        cls, run: str | Path, item_ids: Sequence[str], rule: HistoryRule = "all"
    ) -> ServingCatalog:
        """Titles from the run's items; users' histories from its split under every rule
        (``Split.histories``: all interactions, or those before the held-out test item)."""
        from llmrec.data.prepare import PreparedData

        prepared = PreparedData.load(run)
        items = prepared.items.astype({"item_id": str})
        titles = {}
        if "title" in items.columns:
            titles = dict(zip(items["item_id"], items["title"].astype(str), strict=True))
        by_rule = {
            name: {u: tuple(h) for u, (h, _) in prepared.split.histories(name).items()}
            for name in ("all", "test", "valid")
        }
        return cls(tuple(item_ids), titles, by_rule[rule], rule, by_rule)


def with_beams(model: Recommender, width: int | None) -> Recommender:
    """``model`` searching with beam width ``width`` where it has a width to set."""
    if width is None or not hasattr(model, "with_beams"):
        return model
    return model.with_beams(width)


@dataclass
class _Pending:
    history: Sequence[str]
    exclude: Collection[str]
    user: str | None
    future: asyncio.Future[list[tuple[str, float]]]


@dataclass
class RecommenderBackend:
    """Recommenders by adapter name (``DEFAULT``: the default model) behind a micro-batcher."""

    models: Mapping[str, Recommender]
    name: str
    max_width: int | None = None  # widest beam the models can run (None: no limit of its own)
    max_batch: int = 16
    max_wait_ms: float = 5.0
    closers: Sequence[Any] = ()  # engines to shut down with the server

    def __post_init__(self) -> None:
        self._queues: dict[tuple[str, int | None, int], asyncio.Queue[_Pending]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recommend")

    @property
    def adapters(self) -> Collection[str]:
        """Adapter names a request may ask for."""
        return [name for name in self.models if name != DEFAULT]

    async def recommend(
        self,
        history: Sequence[str],
        k: int,
        exclude: Collection[str],
        adapter: str | None = None,
        width: int | None = None,
        user: str | None = None,
    ) -> list[tuple[str, float]]:
        """Best first, at most ``k``, never an item of ``exclude``; answered in a batch with
        the requests that arrive with it for the same model, width and k (so an answer never
        depends on what else was in flight)."""
        key = (adapter or DEFAULT, width, k)
        if key not in self._queues:
            self._queues[key] = asyncio.Queue()
            self._workers.append(asyncio.create_task(self._run(key)))
        future = asyncio.get_running_loop().create_future()
        await self._queues[key].put(_Pending(history, exclude, user, future))
        return await future

    async def _run(self, key: tuple[str, int | None, int]) -> None:
        queue = self._queues[key]
        model = with_beams(self.models[key[0]], key[1])
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self.max_wait_ms / 1000
            while len(batch) < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout))
                except TimeoutError:
                    break
            try:
                results = await self._answer(model, batch, key[2])
            except Exception as err:
                # One bad request must not fail the others: answer them one by one.
                if len(batch) == 1:
                    batch[0].future.set_exception(err)
                    continue
                for p in batch:
                    try:
                        (ranked,) = await self._answer(model, [p], key[2])
                    except Exception as one:
                        p.future.set_exception(one)
                    else:
                        p.future.set_result(ranked)
                continue
            for p, ranked in zip(batch, results, strict=True):
                p.future.set_result(ranked)

    async def _answer(
        self, model: Recommender, batch: list[_Pending], k: int
    ) -> list[list[tuple[str, float]]]:
        """One ``recommend`` call for the whole batch, in the worker thread."""
        items, scores = await asyncio.get_running_loop().run_in_executor(
            self._pool,
            model.recommend,
            [p.history for p in batch],
            k,
            [p.exclude for p in batch],
            [p.user for p in batch],
        )
        return [
            [(i, float(s)) for i, s in zip(row, values, strict=True) if i and math.isfinite(s)]
            for row, values in zip(items, scores, strict=True)
        ]

    async def close(self) -> None:
        """Stop the batchers and the engines."""
        for worker in self._workers:
            worker.cancel()
        self._pool.shutdown(wait=False)
        for engine in self.closers:
            shutdown = getattr(engine, "shutdown", None)
            if shutdown is not None:
                shutdown()
