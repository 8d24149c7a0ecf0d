"""vLLM under the trie: greedy, sampling and beam search only ever name catalog items, over
random catalogs; the beam search on vLLM ranks exactly like HF's constrained beam search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.constrain.trie import ItemTrie
from llmrec.constrain.vllm import constraint_args
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.vllm import VLLMRecommender, trie_file
from tests.vllm_fixtures import TextPrompts, random_catalog

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SEEDS = range(8)
DECODING = [
    {"temperature": 0.0},
    {"temperature": 2.0},
    {"temperature": 1.0, "top_k": 1},
    {"temperature": 0.2, "top_p": 0.01},
    {"temperature": 1.5, "top_k": 50, "top_p": 0.9, "min_p": 0.1},
    {"temperature": 1.0, "repetition_penalty": 2.0, "presence_penalty": 1.5},
]
PROMPTS = ["the user watched", "what comes after these movie item liked", "next", "a"]


def _trie(catalog: Any, tokenizer: Any) -> tuple[ItemTrie, str]:
    trie = ItemTrie.from_sid_map(catalog, tokenizer, tokenizer.eos_token_id)
    return trie, str(trie_file(trie))


@pytest.mark.parametrize("seed", SEEDS)
def test_greedy_and_sampling_give_only_catalog_items(
    llm: Any, tiny_dir: tuple[Path, Any], seed: int
) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = tiny_dir[1]
    catalog = random_catalog(seed)
    trie, path = _trie(catalog, tokenizer)
    prompts, params = [], []
    for text in PROMPTS:
        for decoding in DECODING:
            prompts.append(TokensPrompt(prompt_token_ids=tokenizer(text)["input_ids"]))
            params.append(
                SamplingParams(
                    max_tokens=trie.depth,
                    n=3 if decoding["temperature"] else 1,
                    stop_token_ids=[trie.end_token_id],
                    seed=seed,
                    extra_args=constraint_args(path),
                    **decoding,
                )
            )
    # Free-text requests share the batch and stay unconstrained.
    free = SamplingParams(max_tokens=trie.depth, temperature=0.0, ignore_eos=True)
    prompts.append(TokensPrompt(prompt_token_ids=tokenizer("the user")["input_ids"]))
    params.append(free)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    names = set(catalog.item_ids)
    produced = 0
    for out in outputs[:-1]:
        for completion in out.outputs:
            item = trie.items_of(torch.tensor([list(completion.token_ids)]))[0]
            assert item in names, (completion.token_ids, item)
            produced += 1
    assert produced == sum(p.n for p in params[:-1])
    assert trie.items_of(torch.tensor([list(outputs[-1].outputs[0].token_ids)]))[0] is None


def test_exclusions_hold_for_sampling(llm: Any, tiny_dir: tuple[Path, Any]) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = tiny_dir[1]
    catalog = random_catalog(100, n=12)
    trie, path = _trie(catalog, tokenizer)
    banned = list(range(10))  # two items stay allowed
    params = SamplingParams(
        max_tokens=trie.depth,
        n=20,
        temperature=2.0,
        seed=0,
        stop_token_ids=[trie.end_token_id],
        extra_args=constraint_args(path, exclude=banned),
    )
    out = llm.generate(
        [TokensPrompt(prompt_token_ids=tokenizer("next")["input_ids"])], params, use_tqdm=False
    )[0]
    got = {trie.items_of(torch.tensor([list(c.token_ids)]))[0] for c in out.outputs}
    assert got <= set(catalog.item_ids[10:]) and got


def test_malformed_constraint_arguments_are_rejected(llm: Any, tiny_dir: tuple[Path, Any]) -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.inputs import TokensPrompt

    _, path = _trie(random_catalog(1), tiny_dir[1])
    prompt = TokensPrompt(prompt_token_ids=tiny_dir[1]("next")["input_ids"])
    for extra in (
        {"llmrec_trie": "/nonexistent.pt"},
        constraint_args(path, prefix_len=99),
        {**constraint_args(path), "llmrec_exclude": [10**6]},
    ):
        with pytest.raises(VLLMValidationError, match="llmrec_"):
            llm.generate([prompt], SamplingParams(max_tokens=2, extra_args=extra), use_tqdm=False)


@pytest.fixture(scope="module")
def hf_model(tiny_dir: tuple[Path, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32).eval()


@pytest.mark.parametrize(("seed", "width"), [(s, w) for s in SEEDS for w in (1, 5, 12)])
def test_vllm_beam_search_ranks_like_hf(
    llm: Any, hf_model: Any, tiny_dir: tuple[Path, Any], seed: int, width: int
) -> None:
    tokenizer = tiny_dir[1]
    catalog = random_catalog(seed)
    trie, _ = _trie(catalog, tokenizer)
    prompts = TextPrompts(tokenizer, catalog)
    rng = np.random.default_rng(seed)
    histories = [list(rng.choice(catalog.item_ids, size=int(rng.integers(0, 6)))) for _ in range(5)]
    exclude = [set(h[:2]) for h in histories] if seed % 2 else None
    width = min(width, len(catalog.item_ids))
    vllm_rec = VLLMRecommender(llm, prompts, trie)  # type: ignore[arg-type]
    hf_rec = HFRecommender(hf_model, prompts, trie)  # type: ignore[arg-type]
    got = vllm_rec.score_beam(histories, width, exclude)
    want = hf_rec.score_beam(histories, width, exclude)
    names = set(catalog.item_ids)
    for u, (g, w) in enumerate(zip(got, want, strict=True)):
        assert [i for i, _ in g] == [i for i, _ in w], (u, g, w)
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-4, atol=1e-3)
        items = [i for i, _ in g]
        assert len(set(items)) == len(items) and set(items) <= names
        if exclude:
            assert not set(items) & exclude[u]


def test_vllm_recommender_protocol(llm: Any, tiny_dir: tuple[Path, Any]) -> None:
    from llmrec.recommend.base import Recommender

    catalog = random_catalog(3, n=30)
    trie, _ = _trie(catalog, tiny_dir[1])
    rec = VLLMRecommender(llm, TextPrompts(tiny_dir[1], catalog), trie, num_beams=8)  # type: ignore[arg-type]
    assert isinstance(rec, Recommender)
    items, scores = rec.recommend([["" + catalog.item_ids[0]], []], k=10)
    assert scores.shape == (2, 10) and all(len(set(r)) == 10 for r in items)
    assert all(set(r) <= set(catalog.item_ids) for r in items)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_evaluate_through_vllm_equals_hf(
    llm: Any, hf_model: Any, tiny_dir: tuple[Path, Any]
) -> None:
    """``evaluate`` (what ``llmrec eval llm_backend=vllm`` runs) gives HF's per-user ranks."""
    import pandas as pd

    from llmrec.data.split import leave_one_out
    from llmrec.eval.protocol import EvalConfig, evaluate

    catalog = random_catalog(5, n=30)
    trie, _ = _trie(catalog, tiny_dir[1])
    prompts = TextPrompts(tiny_dir[1], catalog)
    rng = np.random.default_rng(5)
    events = pd.DataFrame(
        [
            (f"u{u}", str(i), t)
            for u in range(12)
            for t, i in enumerate(rng.choice(catalog.item_ids, size=6))
        ],
        columns=["user_id", "item_id", "timestamp"],
    )
    split = leave_one_out(events)
    for exclude_seen in (False, True):
        cfg = EvalConfig(ks=[5, 10], bootstrap=0)
        runs = [
            evaluate(rec, split, cfg, catalog=catalog.item_ids, exclude_seen=exclude_seen)
            for rec in (
                VLLMRecommender(llm, prompts, trie, num_beams=10),  # type: ignore[arg-type]
                HFRecommender(hf_model, prompts, trie, num_beams=10),
            )
        ]  # type: ignore[arg-type]
        got, want = (r.per_user.set_index("user_id")["rank"] for r in runs)
        assert got.equals(want)
        assert runs[0].metrics["ndcg@10"] == runs[1].metrics["ndcg@10"]
