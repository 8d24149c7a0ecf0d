"""Building the vLLM engine llmrec serves with, and ``VLLMRecommender`` on top of it.

One engine serves everything: the trie processor is installed once and turned on per request,
prefix caching shares each user's prompt between beam steps, and logprobs come back as the
constrained raw log-probabilities (``logprobs_mode="processed_logits"``; see
``llmrec.constrain.vllm``). With ``enable_lora`` the same engine serves many LoRA adapters.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.constrain.trie import ItemTrie
from llmrec.constrain.vllm import save_trie, trie_dir
from llmrec.recommend.base import DEFAULT_BEAMS, Users, beam_width, pad_rows
from llmrec.recommend.prompting import PromptBuilder, RunDecoding
from llmrec.recommend.vllm_beam import Search, beam_search

logger = logging.getLogger(__name__)

PROCESSOR = "llmrec.constrain.vllm:TrieLogitsProcessor"


@dataclass
class EngineConfig:
    """vLLM engine settings (the ones that matter for constrained recommendation)."""

    dtype: str = field(default="auto", metadata={"help": "weights dtype (auto: as saved)"})
    max_model_len: int = field(
        default=0, metadata={"help": "longest prompt + item in tokens (0: the model's own)"}
    )
    block_size: int = field(
        default=32,
        metadata={"help": "KV-cache block size; 32 on CPU so short prompts hit the prefix cache"},
    )
    enforce_eager: bool = field(
        default=True, metadata={"help": "skip graph capture/compilation (CPU start: 25 s vs 75 s)"}
    )
    max_logprobs: int = field(
        default=128,
        metadata={
            "help": "top log-probabilities a request may ask: a constrained beam of width W asks "
            "min(W, the widest trie node), so this bounds the widest beam"
        },
    )
    max_num_seqs: int = field(default=256, metadata={"help": "requests per engine step"})
    kv_cache_gb: float = field(
        default=1.0, metadata={"help": "CPU KV cache (VLLM_CPU_KVCACHE_SPACE) if unset"}
    )
    gpu_memory_utilization: float = field(default=0.5, metadata={"help": "GPU only"})
    enable_lora: bool = field(default=False, metadata={"help": "serve LoRA adapters"})
    max_loras: int = field(default=4, metadata={"help": "adapters in one batch"})
    max_cpu_loras: int = field(
        default=0, metadata={"help": "adapters cached in host memory (0: max_loras)", "min": 0}
    )
    max_lora_rank: int = field(default=16, metadata={"help": "largest adapter rank"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    executor: str = field(
        default="",
        metadata={
            "help": "distributed_executor_backend ('' = vLLM's choice; 'uni' runs the model in "
            "the engine process, one process hop less per step)"
        },
    )


def engine_kwargs(model_dir: str | Path, cfg: EngineConfig) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` / ``AsyncEngineArgs`` (pure)."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": cfg.dtype,
        "block_size": cfg.block_size,
        "enforce_eager": cfg.enforce_eager,
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logits",
        "max_logprobs": cfg.max_logprobs,
        "max_num_seqs": cfg.max_num_seqs,
        "logits_processors": [PROCESSOR],
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "seed": cfg.seed,
    }
    if cfg.max_model_len:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.executor:
        kwargs["distributed_executor_backend"] = cfg.executor
    if cfg.enable_lora:
        kwargs.update(enable_lora=True, max_loras=cfg.max_loras, max_lora_rank=cfg.max_lora_rank)
        if cfg.max_cpu_loras:
            kwargs["max_cpu_loras"] = max(cfg.max_cpu_loras, cfg.max_loras)
    return kwargs


def _cpu_env(cfg: EngineConfig) -> None:
    # vLLM's CPU backend refuses to start without a KV-cache size; never override the user's.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gb))))


def build_llm(model_dir: str | Path, cfg: EngineConfig | None = None) -> Any:
    """A synchronous ``vllm.LLM`` with the trie processor installed (call under ``__main__``)."""
    from vllm import LLM

    cfg = cfg or EngineConfig()
    _cpu_env(cfg)
    logger.info("starting vLLM on %s: %s", model_dir, asdict(cfg))
    return LLM(**engine_kwargs(model_dir, cfg))


def trie_file(trie: ItemTrie, folder: str | Path | None = None) -> Path:
    """Save ``trie`` where the engine process can load it, named by its content."""
    digest = hashlib.sha256()
    for tensor in (trie.edge_key, trie.edge_child, trie.node_item):
        digest.update(tensor.cpu().numpy().tobytes())
    digest.update(f"{trie.end_token_id}:{len(trie.item_ids)}".encode())
    folder = Path(folder or trie_dir())  # the folder the engine allows by default
    path = folder / f"trie-{digest.hexdigest()[:16]}.pt"
    return path if path.is_file() else save_trie(trie, path)


@dataclass
class VLLMRecommender:
    """Constrained beam search on a ``vllm.LLM``, behind the ``Recommender`` protocol."""

    llm: Any
    prompts: PromptBuilder
    trie: ItemTrie
    num_beams: int = DEFAULT_BEAMS
    batch_size: int = 64
    lora_request: Any = None
    trie_path: str = ""

    def __post_init__(self) -> None:
        if not self.trie_path:
            self.trie_path = str(trie_file(self.trie))
        self._index = {item: i for i, item in enumerate(self.trie.item_ids)}

    @classmethod
    def from_run(cls, run: str | Path, llm: Any, **kwargs: Any) -> VLLMRecommender:
        """Prompts and trie of a run (``RunDecoding``), around an engine built on its model."""
        decoding = RunDecoding.load(run)
        return cls(llm, decoding.prompts, decoding.trie, **kwargs)

    def with_beams(self, num_beams: int) -> VLLMRecommender:
        """This recommender searching with another beam width (same engine, prompts, trie)."""
        return self if num_beams == self.num_beams else replace(self, num_beams=num_beams)

    @property
    def max_width(self) -> int | None:
        """The widest beam the engine serves (its ``max_logprobs``), None if unbounded."""
        limit = getattr(self.llm.llm_engine.model_config, "max_logprobs", None)
        return None if limit is None or limit < 0 else int(limit)

    def score_beam(
        self,
        histories: Sequence[Sequence[str]],
        width: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per user, ``width`` (item, log-prob) pairs best first (as ``HFRecommender``'s)."""
        searches = [
            Search(
                self.prompts.encode(h),
                width,
                sorted(self._index[i] for i in (exclude[u] if exclude else ()) if i in self._index),
            )
            for u, h in enumerate(histories)
        ]
        found = beam_search(self.llm, searches, self.trie, self.trie_path, self.lora_request)
        return [[(self.trie.item_ids[i], s) for i, s in row] for row in found]

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k catalog items per history (see ``Recommender``)."""
        width = beam_width(self.num_beams, k, len(self.trie.item_ids))
        items: list[list[str]] = []
        scores: list[list[float]] = []
        for start in range(0, len(histories), self.batch_size):
            part = histories[start : start + self.batch_size]
            skip = exclude[start : start + len(part)] if exclude else None
            for row in self.score_beam(part, width, skip):
                items.append([i for i, _ in row[:k]])
                scores.append([s for _, s in row[:k]])
        return pad_rows(items, scores, k)
