"""The vLLM beam search's bookkeeping without an engine: how many log-probabilities a beam
request asks, the engine checks and their messages, and one level of the search."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.vllm_beam import Search, check_engine, expand, logprobs_needed, ranked

END = 99


def _trie() -> ItemTrie:
    # depth 0: 3 codes, depth 1: up to 5 codes under one node, then the end token
    seqs = [[1, 10 + j, END] for j in range(5)] + [[2, 10, END], [3, 11, END]]
    return ItemTrie.from_sequences(np.array(seqs), [f"i{k}" for k in range(len(seqs))], END)


def test_logprobs_needed_is_bounded_by_the_widest_node() -> None:
    trie = _trie()
    assert trie.max_children == (3, 5, 1)
    assert logprobs_needed(trie, 4, 0) == 3
    assert logprobs_needed(trie, 4, 1) == 4
    assert logprobs_needed(trie, 4, 2) == 1  # the end token only
    assert logprobs_needed(trie, 200) == 5
    assert logprobs_needed(trie, 2) == 2


def test_check_engine_names_the_limit() -> None:
    trie = _trie()
    check_engine(SimpleNamespace(logprobs_mode="processed_logits", max_logprobs=5), 200, trie)
    config = SimpleNamespace(logprobs_mode="processed_logits", max_logprobs=4)
    check_engine(config, 4)
    with pytest.raises(ValueError, match=r"beam width 200 needs 5 .* max_logprobs=4"):
        check_engine(config, 200, trie)  # the widest node has 5 children
    with pytest.raises(ValueError, match=r"beam width 5 needs 5 .* max_logprobs=4"):
        check_engine(config, 5)


def test_check_engine_wants_processed_logits() -> None:
    with pytest.raises(ValueError, match="processed_logits"):
        check_engine(SimpleNamespace(logprobs_mode="raw_logprobs", max_logprobs=128), 4)


def test_check_engine_unlimited() -> None:
    check_engine(SimpleNamespace(logprobs_mode="processed_logits", max_logprobs=-1), 10_000)


def test_one_level_keeps_the_best_width_prefixes() -> None:
    trie = _trie()
    search = Search([7], 2)
    expand(search, [[(1, -0.1), (2, -0.5), (3, -3.0)]], END)
    assert search.running == [((1,), -0.1), ((2,), -0.5)] and search.depth == 1
    expand(search, [[(10, -1.0), (11, float("-inf"))], [(10, -0.2)]], END)
    assert search.running == [((2, 10), -0.7), ((1, 10), -1.1)]
    expand(search, [[(END, -0.3)], [(END, -0.05)]], END)
    assert search.done
    assert ranked(search, trie) == [(5, pytest.approx(-1.0)), (0, pytest.approx(-1.15))]
