"""Wide beams on vLLM: up to 128 (an engine with ``max_logprobs=128``, the default), equal to
HF's constrained beam search of the same width; a width the engine cannot serve fails with an
error naming its ``max_logprobs``; a width above the limit is fine where no trie node has that
many children (a beam request asks no more log-probabilities than a node has continuations)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.constrain.trie import ItemTrie
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.vllm import VLLMRecommender, trie_file
from llmrec.recommend.vllm_beam import logprobs_needed
from tests.tiny_corpus import WORDS
from tests.vllm_fixtures import TextPrompts

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CODES = (160, 4, 4)  # the first level is wider than the widest beam the engine serves


def _codes(n: int, seed: int, first: int = CODES[0]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flat = rng.choice(first * CODES[1] * CODES[2], size=n, replace=False)
    return np.stack(
        [flat // (CODES[1] * CODES[2]), (flat // CODES[2]) % CODES[1], flat % CODES[2]], 1
    )


def _catalog(n: int, seed: int, first: int = CODES[0]) -> SemanticIdMap:
    codes = _codes(n, seed, first)
    return SemanticIdMap(tuple(f"w{i}" for i in range(n)), codes, CODES)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tiny model whose tokenizer has 160 + 4 + 4 SID tokens, its engine and HF twin."""
    from transformers import AutoModelForCausalLM

    from llmrec.recommend.vllm import EngineConfig, build_llm
    from llmrec.tokens import add_sid_tokens, build_tiny_model, save_tiny, train_tokenizer

    rng = np.random.default_rng(0)
    tokenizer = train_tokenizer([" ".join(rng.choice(WORDS, size=12)) for _ in range(300)], 300)
    add_sid_tokens(tokenizer, _catalog(16, 0))  # vocabulary(): every code of every level
    model = build_tiny_model(tokenizer, hidden_size=64, num_heads=2, num_layers=2, seed=5)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40.0)  # no near-ties between the engines
    folder = save_tiny(model, tokenizer, tmp_path_factory.mktemp("wide") / "model")
    llm = build_llm(folder, EngineConfig(dtype="float32", max_model_len=256))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    yield {"llm": llm, "hf": hf, "tokenizer": tokenizer}
    llm.llm_engine.engine_core.shutdown()


def _recommenders(wide: dict[str, Any], catalog: SemanticIdMap) -> tuple[Any, Any, ItemTrie]:
    tokenizer = wide["tokenizer"]
    trie = ItemTrie.from_sid_map(catalog, tokenizer, tokenizer.eos_token_id)
    prompts = TextPrompts(tokenizer, catalog)
    vllm_rec = VLLMRecommender(wide["llm"], prompts, trie, trie_path=str(trie_file(trie)))  # type: ignore[arg-type]
    hf_rec = HFRecommender(wide["hf"], prompts, trie, batch_size=2)  # type: ignore[arg-type]
    return vllm_rec, hf_rec, trie


def _histories(catalog: SemanticIdMap, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [list(rng.choice(catalog.item_ids, size=int(rng.integers(0, 4)))) for _ in range(3)]


@pytest.mark.parametrize("width", [64, 128])
def test_wide_beams_rank_like_hf(wide: dict[str, Any], width: int) -> None:
    catalog = _catalog(700, width)
    vllm_rec, hf_rec, trie = _recommenders(wide, catalog)
    assert logprobs_needed(trie, width) == width  # the first level has more than 128 codes
    histories = _histories(catalog, width)
    exclude = [set(h) for h in histories] if width == 128 else None
    got = vllm_rec.score_beam(histories, width, exclude)
    want = hf_rec.score_beam(histories, width, exclude)
    for u, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == width
        assert [i for i, _ in g] == [i for i, _ in w], u
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-4, atol=1e-3)
        if exclude:
            assert not {i for i, _ in g} & exclude[u]


def test_width_above_the_engine_limit_fails_naming_it(wide: dict[str, Any]) -> None:
    catalog = _catalog(700, 1)
    vllm_rec, _, trie = _recommenders(wide, catalog)
    assert logprobs_needed(trie, 129) == 129
    with pytest.raises(ValueError, match=r"beam width 129 .* max_logprobs=128"):
        vllm_rec.score_beam([[]], 129)


def test_width_above_the_limit_is_fine_on_narrow_nodes(wide: dict[str, Any]) -> None:
    """60 first-level codes: a beam of 150 asks at most 60 log-probabilities per request."""
    catalog = _catalog(400, 2, first=60)
    vllm_rec, hf_rec, trie = _recommenders(wide, catalog)
    assert logprobs_needed(trie, 150) <= 60
    histories = _histories(catalog, 2)[:2]
    got = vllm_rec.score_beam(histories, 150)
    want = hf_rec.score_beam(histories, 150)
    for g, w in zip(got, want, strict=True):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-4, atol=1e-3)
