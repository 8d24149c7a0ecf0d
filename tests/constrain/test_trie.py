"""ItemTrie against the plain-Python reference on random catalogs (Hypothesis)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.constrain.trie import DEAD, FINISHED, ItemTrie
from tests.constrain.reference_trie import ReferenceTrie

END = 3


@st.composite
def catalogs(draw: st.DrawFn) -> tuple[list[list[int]], list[str]]:
    """Random catalogs: 1–4 levels, tiny codebooks (many shared prefixes), 1 to 50 items,
    sometimes of different lengths; tokens are ids 10.., the end token is 3."""
    levels = draw(st.sampled_from([1, 3, 3, 4]))
    size = draw(st.integers(1, 5))
    space = size**levels
    n = draw(st.integers(1, min(space, 50)))
    flat = draw(st.lists(st.integers(0, space - 1), min_size=n, max_size=n, unique=True))
    variable = draw(st.booleans()) and levels > 1
    seqs = []
    for f in flat:
        codes = [(f // size**lv) % size for lv in range(levels)]
        seq = [10 + lv * 8 + c for lv, c in enumerate(codes)]
        if variable and codes[0] == 0:
            seq = seq[:1] + [99]  # a short branch: still prefix-free thanks to token 99
        seqs.append(seq + [END])
    unique = {tuple(s): None for s in seqs}
    seqs = [list(s) for s in unique]
    return seqs, [f"item{i}" for i in range(len(seqs))]


def padded(seqs: list[list[int]]) -> np.ndarray:
    width = max(len(s) for s in seqs)
    return np.array([s + [-1] * (width - len(s)) for s in seqs])


def prefixes(seqs: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
    """Valid partial paths, complete ones, paths past the end, and off-trie junk."""
    out = []
    for s in seqs[:20]:
        cut = int(rng.integers(0, len(s) + 1))
        out.append(s[:cut])
        out.append(s + [END, END])  # padding after a finished item
        junk = list(s[:cut]) + [int(rng.integers(4, 60))]
        out.append(junk)
    return out


@settings(max_examples=200, deadline=None)
@given(catalogs(), st.integers(0, 2**31))
def test_fast_trie_equals_reference(catalog: tuple[list[list[int]], list[str]], seed: int) -> None:
    seqs, ids = catalog
    fast = ItemTrie.from_sequences(padded(seqs), ids, END)
    ref = ReferenceTrie(seqs, ids)
    rng = np.random.default_rng(seed)
    for prefix in prefixes(seqs, rng):
        gen = torch.tensor([prefix], dtype=torch.long).reshape(1, len(prefix))
        node = int(fast.walk(gen)[0])
        ref_node = ref.node(prefix)
        depth = len(prefix)
        allowed = set(fast.allowed(fast.walk(gen), depth)[0].tolist())
        if node >= 0 and ref_node is not None and ref.allowed(prefix):
            assert allowed == ref.allowed(prefix)
        else:
            # Off the trie, at a leaf, or past it: only the end token may follow.
            assert allowed == {END}
            finished = any(prefix[: len(s)] == s and len(prefix) > len(s) for s in seqs)
            assert node == (FINISHED if finished else DEAD) or ref.item(prefix) is not None
        scores = torch.from_numpy(rng.normal(size=(1, 128)).astype(np.float32))
        masked = fast.constrain(scores, gen)
        finite = set(torch.nonzero(torch.isfinite(masked[0])).squeeze(1).tolist())
        assert finite == allowed
        assert torch.equal(masked[0, sorted(finite)], scores[0, sorted(finite)])
    full = torch.tensor(padded([s + [END] for s in seqs]))  # trailing padding is ignored
    assert fast.items_of(full) == ids
    assert fast.item_sequences().tolist() == padded(seqs).tolist()


@settings(max_examples=150, deadline=None)
@given(catalogs(), st.integers(0, 2**31))
def test_banned_nodes_match_the_reference(
    catalog: tuple[list[list[int]], list[str]], seed: int
) -> None:
    seqs, ids = catalog
    fast = ItemTrie.from_sequences(padded(seqs), ids, END)
    ref = ReferenceTrie(seqs, ids)
    rng = np.random.default_rng(seed)
    excluded = {i for i in range(len(ids)) if rng.random() < 0.6}
    banned = fast.banned_nodes([sorted(excluded)])
    excluded_ids = {ids[i] for i in excluded}
    for s in seqs:
        for cut in range(len(s) + 1):
            prefix = s[:cut]
            node = int(fast.walk(torch.tensor([prefix], dtype=torch.long).reshape(1, cut))[0])
            below = ref.items_below(prefix)
            assert bool(banned[0, node]) == (below <= excluded_ids), (prefix, below)
            # Under the ban, exactly the tokens leading to some non-excluded item stay allowed.
            if node >= 0 and ref.allowed(prefix) and not below <= excluded_ids:
                gen = torch.tensor([prefix], dtype=torch.long).reshape(1, cut)
                masked = fast.constrain(torch.zeros(1, 128), gen, banned)
                finite = set(torch.nonzero(torch.isfinite(masked[0])).squeeze(1).tolist())
                expected = {
                    t
                    for t in ref.allowed(prefix)
                    if not ref.items_below([*prefix, t]) <= excluded_ids
                }
                assert finite == expected


def test_rows_without_a_finite_allowed_score_fall_back_to_uniform() -> None:
    trie = ItemTrie.from_sequences(np.array([[10, 20, END], [11, 20, END]]), ["x", "y"], END)
    scores = torch.full((1, 32), float("-inf"))  # e.g. min_new_tokens banned everything
    out = trie.constrain(scores, torch.zeros((1, 0), dtype=torch.long))
    assert set(torch.nonzero(torch.isfinite(out[0])).squeeze(1).tolist()) == {10, 11}


def test_invalid_catalogs_are_refused() -> None:
    with pytest.raises(ValueError, match="share one token sequence"):
        ItemTrie.from_sequences(np.array([[10, END], [10, END]]), ["a", "b"], END)
    with pytest.raises(ValueError, match="does not end with the end token"):
        ItemTrie.from_sequences(np.array([[10, 11]]), ["a"], END)


def test_one_item_catalog_and_device_move() -> None:
    trie = ItemTrie.from_sequences(np.array([[10, 11, END]]), ["only"], END).to("cpu")
    gen = torch.tensor([[10]])
    assert trie.allowed(trie.walk(gen), 1).tolist() == [[11]]
    assert trie.items_of(torch.tensor([[10, 11, END]])) == ["only"]
    assert trie.nbytes > 0 and trie.depth == 3


@settings(max_examples=150, deadline=None)
@given(catalogs(), st.integers(0, 2**31), st.booleans())
def test_window_and_gather_masking_agree(
    catalog: tuple[list[list[int]], list[str]], seed: int, end_inside: bool
) -> None:
    """The dense-table fast path gives bit-identical scores to the plain gather/scatter path,
    over mixed batches (open, finished and dead rows), -inf scores, stuck rows and bans."""
    import llmrec.constrain.dense as dense_module

    seqs, ids = catalog
    end = 14 if end_inside else END  # 14 lies inside the level tokens' id range
    seqs = [[t if t != END else end for t in s] for s in seqs]
    if end_inside and any(14 in s[:-1] for s in seqs):
        seqs = [[t + 40 if t == 14 else t for t in s[:-1]] + [end] for s in seqs]
    fast = ItemTrie.from_sequences(padded(seqs), ids, end)
    saved_limit = dense_module.MAX_NEXT_ROW_ENTRIES
    dense_module.MAX_NEXT_ROW_ENTRIES = 0  # tables without transitions: the CSR walk finds rows
    try:
        csr_walk = ItemTrie.from_sequences(padded(seqs), ids, end)
    finally:
        dense_module.MAX_NEXT_ROW_ENTRIES = saved_limit
    assert all(t is None or t.next_row is None for t in csr_walk.tables)
    rng = np.random.default_rng(seed)
    rows = [p for p in prefixes(seqs, rng)]
    depth = int(rng.integers(0, max(len(r) for r in rows) + 1))
    # One batch at one depth: truncate or pad with junk so every row has ``depth`` tokens.
    gen = torch.tensor(
        [(r + [int(rng.integers(4, 60)) for _ in range(depth)])[:depth] for r in rows],
        dtype=torch.long,
    ).reshape(len(rows), depth)
    scores = torch.from_numpy(rng.normal(size=(len(rows), 128)).astype(np.float32))
    scores[torch.from_numpy(rng.random((len(rows), 128)) < 0.3)] = float("-inf")
    scores[0] = float("-inf")  # a stuck row
    excluded = [sorted(i for i in range(len(ids)) if rng.random() < 0.5) for _ in range(2)]
    banned = fast.banned_nodes(excluded)
    ban_rows = torch.from_numpy(rng.integers(0, 2, len(rows)))
    for ban in (None, banned):
        window = fast.constrain(scores, gen, ban, ban_rows if ban is not None else None)
        general = dataclasses.replace(fast, dense=False)  # the gather/scatter path
        gathered = general.constrain(scores, gen, ban, ban_rows if ban is not None else None)
        assert torch.equal(window, gathered)
        assert torch.equal(
            csr_walk.constrain(scores, gen, ban, ban_rows if ban is not None else None), gathered
        )
        in_place = scores.clone()
        out = fast.constrain(
            in_place, gen, ban, ban_rows if ban is not None else None, inplace=True
        )
        assert out.data_ptr() == in_place.data_ptr() and torch.equal(out, window)
        assert torch.isfinite(window).any(1).all()  # every row keeps a finite score


# End token before the SID tokens, inside a level's id range (a hole), just after, far after.
@pytest.mark.parametrize("end", [2, 21, 40, 120])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_span_masking_in_place_equals_gather_path(end: int, seed: int) -> None:
    """SID tokens with consecutive ids per level take the in-place span path: same scores as
    the gather path, also with -inf, +inf and NaN at blocked tokens and stuck rows."""

    rng = np.random.default_rng(seed)
    codes = {tuple(int(c) for c in rng.integers(0, 4, 3)) for _ in range(12)} | {
        (0, 0, 0),
        (3, 3, 3),
    }
    level1 = [20, 22, 23, 24] if end == 21 else [20, 21, 22, 23]
    seqs = [[16 + a, level1[b], 25 + c, end] for a, b, c in sorted(codes)]
    ids = [f"i{k}" for k in range(len(seqs))]
    trie = ItemTrie.from_sequences(padded(seqs), ids, end)
    spans = [t.span for t in trie.tables if t is not None]
    assert all(spans) and (end != 21 or any(s[2] == -1 for s in spans if s))
    depth = int(rng.integers(0, 4))
    rows = [s[:depth] for s in seqs] + [[int(rng.integers(4, 30)) for _ in range(depth)]]
    gen = torch.tensor(rows, dtype=torch.long).reshape(len(rows), depth)
    scores = torch.from_numpy(rng.normal(size=(len(rows), 128)).astype(np.float32))
    scores[torch.from_numpy(rng.random((len(rows), 128)) < 0.2)] = float("-inf")
    scores[0] = float("-inf")  # a stuck row
    general = dataclasses.replace(trie, dense=False)
    allowed = torch.isfinite(general.constrain(torch.zeros_like(scores), gen))
    expected = general.constrain(scores, gen)
    # +inf and NaN only where the trie forbids: they must end up -inf like any other.
    blocked = ~allowed & (torch.from_numpy(rng.random(allowed.shape)) < 0.1)
    scores[blocked] = torch.where(torch.rand(int(blocked.sum())) < 0.5, float("inf"), float("nan"))
    out = trie.constrain(scores, gen, inplace=True)
    assert out.data_ptr() == scores.data_ptr() and torch.equal(out, expected)
