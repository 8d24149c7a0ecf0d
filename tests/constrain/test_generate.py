"""HF generate under the trie: every output is a catalog item, whatever the decoding settings;
a beam as wide as the catalog ranks exactly like exact full ranking; exclusions hold."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmrec.constrain.hf import constrained_generate_kwargs
from llmrec.constrain.trie import ItemTrie
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.recommend.hf import HFRecommender
from llmrec.tokens import add_sid_tokens, build_tiny_model, train_tokenizer
from tests.constrain.reference_trie import ReferenceTrie
from tests.tiny_corpus import WORDS

LEVELS, K = 4, 5  # the tokenizer knows <a_0>..<d_4>; catalogs use 3 or 4 of the levels


def full_map(levels: int) -> SemanticIdMap:
    codes = np.array(np.meshgrid(*[np.arange(K)] * levels, indexing="ij")).reshape(levels, -1).T
    return SemanticIdMap(tuple(f"x{i}" for i in range(len(codes))), codes, (K,) * levels)


@pytest.fixture(
    scope="module",
    params=[("bpe", "qwen2"), ("sentencepiece", "llama")],
    ids=["bpe-qwen2", "spm-llama"],
)
def stack(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """A locally trained tokenizer with every SID token, and a random tiny model."""
    kind, arch = request.param
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)]
    tokenizer = train_tokenizer(corpus, vocab_size=300, kind=kind)
    add_sid_tokens(tokenizer, full_map(LEVELS))
    model = build_tiny_model(
        tokenizer, arch=arch, hidden_size=64, num_heads=2, num_layers=1, seed=1
    ).eval()
    return tokenizer, model


@st.composite
def catalogs(draw: st.DrawFn) -> SemanticIdMap:
    levels = draw(st.sampled_from([3, 4]))
    space = K**levels
    n = draw(st.integers(1, 40))
    flat = draw(st.lists(st.integers(0, space - 1), min_size=n, max_size=n, unique=True))
    codes = np.array([[(f // K**lv) % K for lv in range(levels)] for f in flat])
    return SemanticIdMap(tuple(f"i{f}" for f in flat), codes, (K,) * levels)


def prompts(tokenizer: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["the user watched", "what comes after these movie item liked", "next"][:n]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


DECODING = [
    {"do_sample": False},
    {"do_sample": True, "temperature": 3.0},
    {"do_sample": True, "top_k": 1},
    {"do_sample": True, "top_p": 0.01, "temperature": 0.2},
    {"num_beams": 4, "num_return_sequences": 4, "do_sample": False},
    {"num_beams": 3, "num_return_sequences": 2, "do_sample": True, "top_k": 2},
]


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(catalogs(), st.sampled_from(DECODING), st.integers(0, 1000))
def test_every_output_is_a_catalog_item(
    stack: tuple[Any, Any], sid_map: SemanticIdMap, decoding: dict, seed: int
) -> None:
    tokenizer, model = stack
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    reference = ReferenceTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    ids, mask = prompts(tokenizer, 3)
    # Adversarial defaults that run before custom processors in HF: each alone could strip
    # every valid token or stop mid-item; the helper switches them off and says so.
    model.generation_config.min_new_tokens = 9
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.suppress_tokens = [tokenizer.eos_token_id]
    with pytest.warns(UserWarning, match="min_new_tokens"):
        kwargs = constrained_generate_kwargs(model, trie, ids.shape[1], **decoding)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    generated = out[:, ids.shape[1] :]
    items = trie.items_of(generated)
    assert None not in items
    for row, item in zip(generated.tolist(), items, strict=True):
        seq = row[: trie.depth]
        assert reference.item(seq) == item  # the slow trie agrees on what was generated


class StaticPrompts:
    """Just enough of PromptBuilder for HFRecommender: histories → fixed prompt ids."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, history: Sequence[str]) -> list[int]:
        return list(self.tokenizer(" ".join(["the user watched", *history]))["input_ids"])


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(catalogs())
def test_full_width_beam_ranks_like_exact_full_ranking(
    stack: tuple[Any, Any], sid_map: SemanticIdMap
) -> None:
    tokenizer, model = stack
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    rec = HFRecommender(model, StaticPrompts(tokenizer), trie, batch_size=2, exact_memory_mb=1)  # type: ignore[arg-type]
    histories = [["liked"], ["movie", "then", "next"], []]
    n = len(sid_map)
    exact = rec.score_all(histories)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        beams = rec.score_beam(histories, n)
    for u, ranked in enumerate(beams):
        assert len(ranked) == n  # every item, once
        order = torch.argsort(exact[u], descending=True, stable=True)
        exact_items = [sid_map.item_ids[i] for i in order.tolist()]
        beam_scores = torch.tensor([s for _, s in ranked])
        np.testing.assert_allclose(beam_scores, exact[u][order], rtol=0, atol=1e-4)
        # Same ranking; where scores tie to 1e-5 either order is fine.
        for (item, _), ex_item, ex_score in zip(ranked, exact_items, exact[u][order], strict=True):
            if item != ex_item:
                assert abs(float(exact[u][sid_map.item_ids.index(item)]) - float(ex_score)) < 1e-5


@pytest.mark.parametrize("mode", ["beam", "exact"])
def test_excluded_items_never_come_back(stack: tuple[Any, Any], mode: str) -> None:
    tokenizer, model = stack
    sid_map = full_map(3)  # 125 items
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    rec = HFRecommender(
        model,
        StaticPrompts(tokenizer),
        trie,
        mode=mode,  # type: ignore[arg-type]
        num_beams=10,
        batch_size=2,
    )
    histories = [["liked"], ["movie"], ["next"]]
    first, _ = rec.recommend(histories, 10)
    exclude = [set(first[0][:5]), set(first[1]), set(sid_map.item_ids[:120])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items, scores = rec.recommend(histories, 10, exclude)
    for row, banned, sc in zip(items, exclude, scores, strict=True):
        real = [i for i in row if i]
        assert not set(real) & banned
        assert len(set(real)) == len(real)  # distinct
        assert np.all(np.diff(sc[np.isfinite(sc)]) <= 1e-6)  # best first
    assert len([i for i in items[0] if i]) == 10
    assert len([i for i in items[2] if i]) == 5  # only 5 items are left for the third user
    assert items[2][5:] == [""] * 5 and np.isneginf(scores[2][5:]).all()


@pytest.mark.parametrize("output_logits", [False, True])
def test_masking_in_place_never_touches_logits_hf_keeps(
    stack: tuple[Any, Any], output_logits: bool
) -> None:
    """The processor masks HF's tensor in place only when HF does not keep it: with
    ``output_logits`` the returned raw logits stay unmasked, and the items are the same."""
    tokenizer, model = stack
    trie = ItemTrie.from_sid_map(full_map(3), tokenizer, tokenizer.eos_token_id)
    ids, mask = prompts(tokenizer, 3)
    kwargs = constrained_generate_kwargs(
        model,
        trie,
        ids.shape[1],
        do_sample=False,
        output_logits=output_logits,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert kwargs["logits_processor"][0].inplace is not output_logits
    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert None not in trie.items_of(out.sequences[:, ids.shape[1] :])
    finite = [torch.isfinite(s).sum(1) for s in out.scores]
    assert all(bool((f < s.shape[1]).all()) for f, s in zip(finite, out.scores, strict=True))
    if output_logits:  # the raw logits were not masked behind HF's back
        assert all(bool(torch.isfinite(x).all()) for x in out.logits)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(catalogs(), st.integers(1, 12))
def test_tree_attention_in_chunks_scores_like_one_pass(
    stack: tuple[Any, Any], sid_map: SemanticIdMap, chunk: int
) -> None:
    """Exact ranking feeds the trie in chunks of whole subtrees: the scores are those of one
    pass over the whole tree."""
    tokenizer, model = stack
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    histories = [["liked"], ["movie", "then", "next"], []]
    whole = HFRecommender(model, StaticPrompts(tokenizer), trie, tree_chunk=10**6)  # type: ignore[arg-type]
    parts = HFRecommender(model, StaticPrompts(tokenizer), trie, tree_chunk=chunk)  # type: ignore[arg-type]
    assert len(whole._tree["chunks"]) == 1
    covered = torch.cat(parts._tree["chunks"]).sort().values
    assert torch.equal(covered, torch.arange(len(parts._tree["nodes"])))  # a partition
    torch.testing.assert_close(
        parts.score_all(histories), whole.score_all(histories), atol=1e-5, rtol=0
    )
