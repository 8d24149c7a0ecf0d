"""CUDA-only paths of constrained decoding (``pytest -m gpu``; skipped without a CUDA device).

On accelerators ``ItemTrie.constrain`` never reads back to the host (its stuck-row fallbacks run
unconditionally there): the dense tables, the in-place span path and the CSR walk with bans must
give the CPU's scores on CUDA, and HF's constrained beam search must rank as it does on the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from llmrec.constrain.trie import ItemTrie

pytestmark = [pytest.mark.gpu]
BASE, CODES, END = 300, 32, 7
VOCAB = BASE + 3 * CODES + 40


def _trie(n_items: int, seed: int, dense: bool) -> ItemTrie:
    rng = np.random.default_rng(seed)
    flat = rng.choice(CODES**3, size=n_items, replace=False)
    seqs = np.stack(
        [
            BASE + flat // CODES**2,
            BASE + CODES + (flat // CODES) % CODES,
            BASE + 2 * CODES + flat % CODES,
            np.full(n_items, END),
        ],
        1,
    )
    trie = ItemTrie.from_sequences(seqs, [f"i{k}" for k in range(n_items)], END)
    return trie if dense else dataclasses.replace(trie, dense=False)


def _generated(trie: ItemTrie, depth: int, rows: int, seed: int) -> torch.Tensor:
    """Prefixes of real items, plus a few off-trie rows (dead beams)."""
    rng = np.random.default_rng(seed)
    seqs = trie.item_sequences()[torch.from_numpy(rng.integers(0, len(trie.item_ids), rows))]
    out = seqs[:, :depth].clone()
    if depth:
        out[:3, -1] = 5  # not a SID token: these rows left the trie
    return out


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("banned", [False, True])
def test_constrain_on_cuda_equals_cpu(dense: bool, inplace: bool, banned: bool) -> None:
    trie = _trie(3000, 0, dense)
    gpu = trie.to("cuda")
    gen = torch.Generator().manual_seed(0)
    bans = rows = None
    if banned:
        bans = trie.banned_nodes([list(range(0, 3000, 3)), list(range(50)), []])
        rows = torch.arange(64) % 3
    for depth in range(trie.depth + 1):
        generated = _generated(trie, depth, 64, depth)
        scores = torch.randn((64, VOCAB), generator=gen) * 5
        scores[5, :] = float("-inf")  # a row the model gave nothing: stuck rows get 0s
        want = trie.constrain(scores.clone(), generated, bans, rows, inplace=inplace)
        got = gpu.constrain(
            scores.cuda(),
            generated.cuda(),
            None if bans is None else bans.cuda(),
            None if rows is None else rows.cuda(),
            inplace=inplace,
        )
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


def test_hf_beam_search_on_cuda_ranks_like_cpu() -> None:
    from llmrec.recommend.hf import HFRecommender
    from llmrec.tokens import add_sid_tokens, build_tiny_model, train_tokenizer
    from tests.tiny_corpus import WORDS
    from tests.vllm_fixtures import TextPrompts, full_map, random_catalog

    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)
    tokenizer = train_tokenizer([" ".join(rng.choice(WORDS, size=12)) for _ in range(300)], 300)
    add_sid_tokens(tokenizer, full_map())
    model = build_tiny_model(tokenizer, hidden_size=64, num_heads=2, num_layers=2, seed=3)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40.0)
    catalog = random_catalog(3, n=40)
    trie = ItemTrie.from_sid_map(catalog, tokenizer, tokenizer.eos_token_id)
    prompts = TextPrompts(tokenizer, catalog)
    histories = [list(rng.choice(catalog.item_ids, size=k)) for k in (0, 1, 3, 5)]
    exclude = [set(h[:1]) for h in histories]
    want = HFRecommender(model.eval(), prompts, trie).score_beam(histories, 8, exclude)  # type: ignore[arg-type]
    got = HFRecommender(model.cuda().eval(), prompts, trie).score_beam(histories, 8, exclude)  # type: ignore[arg-type]
    for g, w in zip(got, want, strict=True):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], atol=1e-3)
