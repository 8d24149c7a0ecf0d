"""``RoutingRecommender``: every user scored with their own adapter (or the shared model).

``router.json`` (``llmrec.recommend.adapters``) maps users to adapter names; a user it does not
list (new, or anonymous) gets the shared model, i.e. the base the adapters apply to. HF serves
the adapters as one PEFT multi-adapter model (``set_adapter`` per group of users, the least
recently used unloaded past ``max_loaded``); vLLM as one engine with a ``LoRARequest`` per
request, so users of different adapters share every engine batch.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from llmrec.errors import UserError
from llmrec.recommend.adapters import (
    Router,
    adapter_megabytes,
    lora_engine_config,
)
from llmrec.recommend.base import DEFAULT_BEAMS, Users, beam_width, pad_rows
from llmrec.recommend.vllm import EngineConfig
from llmrec.run import RunLayout

logger = logging.getLogger(__name__)

# ---- recommenders -----------------------------------------------------------------------------


class AdapterBank(Protocol):
    """Scores histories, each with its own adapter (None: the shared model)."""

    def recommend_with(
        self,
        names: Sequence[str | None],
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None,
        users: Users,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k per history, history ``u`` scored with adapter ``names[u]``."""
        ...

    def with_beams(self, num_beams: int) -> AdapterBank:
        """The same bank searching with another beam width."""
        ...


@dataclass
class RoutingRecommender:
    """Each user's history scored with the adapter the router names (``Recommender``)."""

    router: Router
    bank: AdapterBank
    pin: str | None = None  # every request with this adapter (the HTTP API's explicit adapter)
    max_width: int | None = None  # widest beam the backend serves (vLLM's max_logprobs)

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k catalog items per history (see ``Recommender``)."""
        who: Users = users if users is not None else [None] * len(histories)
        names = [self.pin or self.router.route(u) for u in who]
        return self.bank.recommend_with(names, histories, k, exclude, who)

    def pinned(self, name: str) -> RoutingRecommender:
        """This recommender with every user on adapter ``name``."""
        if name not in self.router.adapters:
            raise UserError(f"unknown adapter {name!r}", field="adapter")
        return replace(self, pin=name)

    def with_beams(self, num_beams: int) -> RoutingRecommender:
        """This recommender searching with another beam width."""
        return replace(self, bank=self.bank.with_beams(num_beams))


def _groups(names: Sequence[str | None]) -> dict[str | None, list[int]]:
    out: dict[str | None, list[int]] = {}
    for u, name in enumerate(names):
        out.setdefault(name, []).append(u)
    return out


@dataclass
class _PeftState:
    """The one PEFT model every HF view shares, with its loaded adapters (LRU order)."""

    model: Any
    loaded: OrderedDict[str, None] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class PeftBank:
    """HF: one PEFT multi-adapter model; each group of users runs under ``set_adapter``."""

    state: _PeftState
    router: Router
    base: Any  # HFRecommender over state.model (prompts, trie, mode, beams)
    max_loaded: int = 64
    _recs: dict[str | None, Any] = field(default_factory=dict)

    def _rec(self, name: str | None) -> Any:
        # One HFRecommender per adapter: exact mode memoises scores per history, which must
        # never leak from one adapter to another.
        if name not in self._recs:
            self._recs[name] = replace(self.base)
        return self._recs[name]

    def _activate(self, name: str) -> None:
        model, loaded = self.state.model, self.state.loaded
        if name in loaded:
            loaded.move_to_end(name)
        else:
            while len(loaded) >= self.max_loaded:
                # The evicted adapter's recommender (and its score memo) stays: reloading
                # brings back the same weights.
                old, _ = loaded.popitem(last=False)
                model.delete_adapter(old)
            model.load_adapter(str(self.router.adapter_dir(name)), adapter_name=name)
            loaded[name] = None
        model.set_adapter(name)

    def recommend_with(
        self,
        names: Sequence[str | None],
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None,
        users: Users,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k per history, one ``HFRecommender`` call per adapter group."""
        items: list[list[str]] = [[] for _ in histories]
        scores = np.full((len(histories), k), -np.inf)
        with self.state.lock:
            for name, idx in _groups(names).items():
                sub_h = [histories[u] for u in idx]
                sub_x = [exclude[u] for u in idx] if exclude is not None else None
                sub_u = [users[u] for u in idx]
                if name is None:
                    with self.state.model.disable_adapter():
                        got, vals = self._rec(None).recommend(sub_h, k, sub_x, sub_u)
                else:
                    self._activate(name)
                    got, vals = self._rec(name).recommend(sub_h, k, sub_x, sub_u)
                for row, u in enumerate(idx):
                    items[u], scores[u] = got[row], vals[row]
        return items, scores

    def with_beams(self, num_beams: int) -> PeftBank:
        """The same model and adapters searching with another beam width."""
        return PeftBank(self.state, self.router, self.base.with_beams(num_beams), self.max_loaded)


@dataclass
class VLLMBank:
    """vLLM: one engine; every user's beam search carries their adapter's ``LoRARequest``."""

    router: Router
    base: Any  # VLLMRecommender on the engine of the shared model
    first_id: int = 1  # vLLM caches adapters by integer id: ids must be unique per engine
    _requests: dict[str, Any] = field(default_factory=dict)

    def request(self, name: str | None) -> Any:
        """The ``LoRARequest`` of adapter ``name`` (None: no adapter)."""
        if name is None:
            return None
        if name not in self._requests:
            from vllm.lora.request import LoRARequest

            ident = self.router.index[name] + self.first_id  # stable per router
            path = str(self.router.adapter_dir(name))
            self._requests[name] = LoRARequest(name, ident, path)
        return self._requests[name]

    def recommend_with(
        self,
        names: Sequence[str | None],
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None,
        users: Users,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k per history: one beam search per chunk, adapters mixed in its batches."""
        width = beam_width(self.base.num_beams, k, len(self.base.trie.item_ids))
        items: list[list[str]] = []
        scores: list[list[float]] = []
        step = self.base.batch_size
        for start in range(0, len(histories), step):
            part = histories[start : start + step]
            skip = exclude[start : start + len(part)] if exclude else None
            loras = [self.request(n) for n in names[start : start + len(part)]]
            rec = replace(self.base, lora_request=loras if any(loras) else None)
            for row in rec.score_beam(part, width, skip):
                items.append([i for i, _ in row[:k]])
                scores.append([s for _, s in row[:k]])
        return pad_rows(items, scores, k)

    def with_beams(self, num_beams: int) -> VLLMBank:
        """The same engine and adapters searching with another beam width."""
        return VLLMBank(self.router, self.base.with_beams(num_beams), self.first_id, self._requests)


def load_routed(
    layout: RunLayout,
    stage: str,
    base_dir: Path,
    *,
    backend: Literal["hf", "vllm"] = "hf",
    mode: Literal["beam", "exact"] = "exact",
    num_beams: int = DEFAULT_BEAMS,
    batch_size: int = 16,
    progress: bool = False,
    engine: EngineConfig | None = None,
    max_loaded: int = 64,
) -> RoutingRecommender:
    """A per-user stage behind the ``Recommender`` protocol, on the merged model in
    ``base_dir`` (what ``llmrec.load(run, "per_user")`` returns)."""
    from llmrec.recommend.prompting import RunDecoding

    router = Router.load(layout.root / stage)
    decoding = RunDecoding.load(layout)
    if backend == "vllm":
        from llmrec.recommend.vllm import VLLMRecommender, build_llm

        sized = lora_engine_config(
            router, engine or EngineConfig(), adapter_megabytes(router), num_beams
        )
        llm = build_llm(base_dir, sized)
        rec = VLLMRecommender(llm, decoding.prompts, decoding.trie, num_beams=num_beams)
        return RoutingRecommender(router, VLLMBank(router, rec), max_width=rec.max_width)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmrec.recommend.hf import HFRecommender

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # PEFT needs one adapter to build the wrapper; the first is loaded now, the rest on use.
    first = router.names[0]
    peft = PeftModel.from_pretrained(model, router.adapter_dir(first), adapter_name=first).eval()
    state = _PeftState(peft, OrderedDict([(first, None)]))
    hf = HFRecommender(
        peft,
        decoding.prompts,
        decoding.trie,
        mode=mode,
        num_beams=num_beams,
        batch_size=batch_size,
        progress=progress,
    )
    return RoutingRecommender(router, PeftBank(state, router, hf, max(1, max_loaded)))
