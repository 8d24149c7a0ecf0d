"""Per-user adapters at inference: the router file, plain LoRAs cut from one sliced LoRA, and
``RoutingRecommender``, which scores each user with their adapter.

A per-user stage (``llmrec train per-user``) trains one LoRA whose rank is cut into *slices*
of ``slice_rank`` rows: slice ``s`` is ``A[s·r:(s+1)·r]`` (rows of A) and ``B[:, s·r:(s+1)·r]``
(columns of B). A user's adapter is a weighting of slices, ``ΔW = Σ_s w_s B_s A_s``: one-hot for
a cluster or heavy-user adapter, the gate's softmax for the gated mixture. Such a weighting is
itself an ordinary LoRA — the kept slices' A blocks scaled by their weights, stacked — so every
adapter exports as a plain PEFT folder that PEFT and vLLM's multi-LoRA load unchanged
(``slice_lora``). Cluster and heavy-user adapters are written into the stage; mixture adapters
(one per user) are cut on first use into a cache folder keyed by the stage.

``router.json`` maps users to adapter names; a user it does not list (new, or anonymous) gets
the shared model, i.e. the base the adapters apply to. HF serves the adapters as one PEFT
multi-adapter model (``set_adapter`` per group of users, the least recently used unloaded past
``max_loaded``); vLLM as one engine with a ``LoRARequest`` per request, so users of different
adapters share every engine batch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from llmrec.errors import UserError
from llmrec.io import write_json_atomic
from llmrec.recommend.base import DEFAULT_BEAMS, Users, beam_width, pad_rows
from llmrec.recommend.vllm import EngineConfig
from llmrec.run import MODEL, ROUTER, RunLayout

logger = logging.getLogger(__name__)

ROUTER_VERSION = 1
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# The ranks vLLM accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks).
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class AdapterSpec:
    """One servable adapter: slice weights, and its folder when the stage wrote one."""

    weights: dict[int, float]
    path: str | None = None  # relative to the stage folder; None: cut on first use


@dataclass(frozen=True)
class Router:
    """A per-user stage's ``router.json``: user → adapter, and how to build each adapter."""

    folder: Path  # the stage folder
    key: str  # the stage key (names the cache of adapters cut on demand)
    mode: str
    slices: int  # slices of the sliced LoRA in <stage>/model
    slice_rank: int
    slice_alpha: float
    adapters: dict[str, AdapterSpec]
    users: dict[str, str]
    clusters: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> Router:
        """The router of a finished per-user stage folder."""
        folder = Path(folder)
        path = folder / ROUTER
        if not path.is_file():
            raise UserError(f"{folder} has no {ROUTER}: is it a per-user stage?")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != ROUTER_VERSION:
            raise UserError(f"{path}: router version {data.get('version')}, expected 1")
        adapters = {
            name: AdapterSpec({int(s): float(w) for s, w in spec["weights"].items()}, spec["path"])
            for name, spec in data["adapters"].items()
        }
        return cls(
            folder,
            str(data["key"]),
            str(data["mode"]),
            int(data["slices"]),
            int(data["slice_rank"]),
            float(data["slice_alpha"]),
            adapters,
            dict(data["users"]),
            {u: int(c) for u, c in data.get("clusters", {}).items()},
        )

    def save(self, extra: Mapping[str, Any] | None = None) -> None:
        """Write ``router.json`` into ``folder`` (``extra``: more keys, for the record)."""
        data = {
            "version": ROUTER_VERSION,
            "key": self.key,
            "mode": self.mode,
            "slices": self.slices,
            "slice_rank": self.slice_rank,
            "slice_alpha": self.slice_alpha,
            "fallback": "users not listed get the shared model (the base the adapters apply to)",
            **(extra or {}),
            "adapters": {
                name: {"weights": {str(s): w for s, w in spec.weights.items()}, "path": spec.path}
                for name, spec in self.adapters.items()
            },
            "users": self.users,
            "clusters": self.clusters,
        }
        write_json_atomic(self.folder / ROUTER, data)

    def route(self, user: str | None) -> str | None:
        """The adapter of ``user``; None (the shared model) for unknown or anonymous users."""
        return None if user is None else self.users.get(str(user))

    def rank(self, name: str) -> int:
        """The LoRA rank of adapter ``name`` (slice rank × kept slices)."""
        return self.slice_rank * sum(1 for w in self.adapters[name].weights.values() if w != 0)

    @property
    def max_rank(self) -> int:
        """The largest adapter rank (what an engine's max_lora_rank must hold)."""
        return max((self.rank(n) for n in self.adapters), default=self.slice_rank)

    @property
    def names(self) -> list[str]:
        """Adapter names, sorted (their order gives vLLM's integer adapter ids)."""
        return sorted(self.adapters)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Adapter name → its position in ``names``."""
        return {name: i for i, name in enumerate(self.names)}

    def adapter_dir(self, name: str, cache: str | Path | None = None) -> Path:
        """A plain PEFT folder of adapter ``name``: the stage's, or cut now into ``cache``
        (default: a folder per stage key under the system's temp dir)."""
        if name not in self.adapters:
            raise UserError(f"unknown adapter {name!r}", field="adapter")
        spec = self.adapters[name]
        if spec.path is not None:
            return self.folder / spec.path
        root = Path(cache or Path(tempfile.gettempdir()) / "llmrec-adapters") / self.key
        target = root / safe_name(name)
        if not (target / ADAPTER_WEIGHTS).is_file():
            export_slices(self.folder / MODEL, target, self.slice_rank, self.slice_alpha, spec)
        return target


def safe_name(name: str) -> str:
    """A folder name for an adapter name (unsafe characters replaced, made unique by a hash)."""
    if re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
        return name
    import hashlib

    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:80]}-{digest}"


def slice_lora(
    tensors: Mapping[str, Any],
    config: Mapping[str, Any],
    slice_rank: int,
    alpha: float,
    weights: Mapping[int, float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A plain LoRA ``(tensors, adapter_config)`` of the weighted slices of a sliced LoRA.

    Slices with weight 0 are left out; each kept slice's A rows are scaled by its weight, so
    ``B' A' = Σ_s w_s B_s A_s``. The scale ``lora_alpha / r`` stays ``alpha / slice_rank`` for
    any number of kept slices. Keys that are not LoRA matrices (the mixture's gate) are dropped.
    """
    import torch

    keep = sorted(s for s, w in weights.items() if w != 0)
    if not keep:
        raise ValueError("an adapter needs at least one slice with a nonzero weight")
    out: dict[str, Any] = {}
    for key, t in tensors.items():
        if ".lora_A." in key:
            blocks = [t[s * slice_rank : (s + 1) * slice_rank] * weights[s] for s in keep]
            out[key] = torch.cat(blocks, 0).contiguous()
        elif ".lora_B." in key:
            blocks = [t[:, s * slice_rank : (s + 1) * slice_rank] for s in keep]
            out[key] = torch.cat(blocks, 1).contiguous()
    rank = slice_rank * len(keep)
    plain = {
        **config,
        "r": rank,
        "lora_alpha": alpha * len(keep),
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return out, plain


def export_slices(
    sliced: str | Path, out: str | Path, slice_rank: int, alpha: float, spec: AdapterSpec
) -> Path:
    """Write the plain PEFT adapter of ``spec`` (weighted slices of the LoRA in ``sliced``)."""
    from safetensors.torch import load_file, save_file

    sliced, out = Path(sliced), Path(out)
    config = json.loads((sliced / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    tensors, plain = slice_lora(
        load_file(str(sliced / ADAPTER_WEIGHTS)), config, slice_rank, alpha, spec.weights
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed into place: a concurrent reader never sees half a folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(plain, indent=2), encoding="utf-8")
        if not (out / ADAPTER_WEIGHTS).is_file():
            os.replace(tmp, out)
    except OSError:
        if not (out / ADAPTER_WEIGHTS).is_file():  # lost a race to an equal folder: fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_user_adapter(
    run: str | Path, user: str, out: str | Path, stage: str = "per_user"
) -> Path:
    """Write ``user``'s adapter of a per-user stage as a plain PEFT folder at ``out``."""
    router = Router.load(RunLayout.of(run).root / stage)
    name = router.route(user)
    if name is None:
        raise UserError(f"user {user!r} has no adapter in {router.folder} (the shared model)")
    spec = router.adapters[name]
    return export_slices(router.folder / MODEL, out, router.slice_rank, router.slice_alpha, spec)


# ---- engine sizing ----------------------------------------------------------------------------


def lora_engine_config(
    router: Router,
    cfg: EngineConfig,
    adapter_mb: float,
    num_beams: int = DEFAULT_BEAMS,
    slots_budget_gb: float = 1.0,
    cache_budget_gb: float = 4.0,
) -> EngineConfig:
    """``cfg`` with LoRA on and sized for the router's adapters (see docs/per_user.md).

    ``adapter_mb`` is one adapter's size at the router's largest rank. vLLM keeps
    ``max_loras`` slots of ``max_lora_rank`` on the device (one engine step mixes at most that
    many adapters; requests of others wait), and an LRU of ``max_cpu_loras`` adapters in host
    memory (a miss reads the folder again). Slots: as many as adapters, but no more than one
    step can use — a user's ``num_beams`` beams are sequences of one adapter, so a step of
    ``max_num_seqs`` sequences holds at most ``max_num_seqs / num_beams`` users — and within
    ``slots_budget_gb``; cache: every adapter within ``cache_budget_gb``.
    """
    n = max(1, len(router.adapters))
    rank = next((r for r in VLLM_RANKS if r >= router.max_rank), None)
    if rank is None:
        raise UserError(f"adapter rank {router.max_rank} exceeds vLLM's largest, {VLLM_RANKS[-1]}")
    slot_mb = max(adapter_mb, 1e-3) * rank / max(1, router.max_rank)
    per_step = max(1, cfg.max_num_seqs // max(1, num_beams))
    max_loras = max(1, min(n, per_step, int(slots_budget_gb * 1024 / slot_mb)))
    max_cpu = max(max_loras, cfg.max_cpu_loras, min(n, int(cache_budget_gb * 1024 / slot_mb)))
    return replace(
        cfg,
        enable_lora=True,
        max_loras=max_loras,
        max_cpu_loras=max_cpu,
        max_lora_rank=max(cfg.max_lora_rank, rank),
    )


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


def adapter_megabytes(router: Router) -> float:
    """Size of the largest-rank adapter, from the sliced LoRA's file (for engine sizing)."""
    total = (router.folder / MODEL / ADAPTER_WEIGHTS).stat().st_size
    return total / 2**20 * router.max_rank / (router.slice_rank * router.slices)


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
