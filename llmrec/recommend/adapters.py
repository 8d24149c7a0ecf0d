"""Per-user adapters on disk: the router file, and plain LoRAs cut from one sliced LoRA.

A per-user stage (``llmrec train per-user``) trains one LoRA whose rank is cut into *slices*
of ``slice_rank`` rows: slice ``s`` is ``A[s·r:(s+1)·r]`` (rows of A) and ``B[:, s·r:(s+1)·r]``
(columns of B). A user's adapter is a weighting of slices, ``ΔW = Σ_s w_s B_s A_s``: one-hot for
a cluster or heavy-user adapter, the gate's softmax for the gated mixture. Such a weighting is
itself an ordinary LoRA — the kept slices' A blocks scaled by their weights, stacked — so every
adapter exports as a plain PEFT folder that PEFT and vLLM's multi-LoRA load unchanged
(``slice_lora``). Cluster and heavy-user adapters are written into the stage; mixture adapters
(one per user) are cut on first use into a cache folder keyed by the stage. ``router.json`` maps
users to adapter names; ``lora_engine_config`` sizes a vLLM engine for them. Serving them is
``llmrec.recommend.routing``'s.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmrec.errors import UserError
from llmrec.io import write_json_atomic
from llmrec.recommend.base import DEFAULT_BEAMS
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


def adapter_megabytes(router: Router) -> float:
    """Size of the largest-rank adapter, from the sliced LoRA's file (for engine sizing)."""
    total = (router.folder / MODEL / ADAPTER_WEIGHTS).stat().st_size
    return total / 2**20 * router.max_rank / (router.slice_rank * router.slices)
