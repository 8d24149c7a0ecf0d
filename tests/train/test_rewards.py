"""Each GRPO reward on hand-computed cases, the registry (names, weights, user functions), and
the SASRec scores the collaborative reward reads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.config import ConfigError
from llmrec.recommend.sasrec import SASRecScorer
from llmrec.train.rewards import (
    RewardContext,
    build_rewards,
    hit,
    make_collaborative,
    make_ranking,
    make_semantic,
    rank_penalties,
    weighted_sum,
)


def test_hit() -> None:
    assert hit(item=["a", "b", None], target=["a", "a", "a"]) == [1.0, 0.0, 0.0]


def test_rank_penalties_are_minionerec_s() -> None:
    # G = 4: discounts 1, 1/log2(3), 1/2, 1/log2(5), normalised to sum -1.
    d = [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(5)]
    assert rank_penalties(4) == pytest.approx([-x / sum(d) for x in d])
    assert sum(rank_penalties(16)) == pytest.approx(-1.0)


def test_ranking_penalises_wrong_items_only_in_groups_that_found_the_target() -> None:
    ranking = make_ranking(4)
    p = rank_penalties(4)
    # Group 1 found the target at rank 2; group 2 missed it.
    columns: dict[str, Any] = {
        "item": ["x", "y", "t", "z", "a", "b", "c", "d"],
        "target": ["t"] * 4 + ["u"] * 4,
        "rank": [0, 1, 2, 3, 0, 1, 2, 3],
        "target_rank": [2] * 4 + [None] * 4,
    }
    assert ranking(**columns) == pytest.approx([p[0], p[1], 0.0, p[3], 0, 0, 0, 0])
    above = make_ranking(4, above_target_only=True)
    assert above(**columns) == pytest.approx([p[0], p[1], 0.0, 0.0, 0, 0, 0, 0])
    assert ranking.__name__ == "ranking" and above.__name__ == "ranking_above"


def test_semantic_is_the_shared_sid_prefix() -> None:
    codes = {"t": (1, 2, 3), "a": (1, 2, 0), "b": (1, 0, 3), "c": (0, 2, 3)}
    semantic = make_semantic(codes)
    got = semantic(item=["t", "a", "b", "c", None], target=["t"] * 5)
    assert got == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0])


def test_collaborative_is_sasrecs_percentile(tmp_path: Path) -> None:
    from llmrec.eval.sasrec import SASRecConfig, SASRecModel, SASRecRecommender

    cfg = SASRecConfig(hidden=16, blocks=1, heads=1, max_len=5)
    torch.manual_seed(0)
    items = ["i0", "i1", "i2", "i3", "i4"]
    SASRecRecommender(SASRecModel(len(items), cfg), items, cfg).save(tmp_path)
    scores = SASRecScorer.load(tmp_path).score([["i0", "i1"]])[0]
    order = np.argsort(scores)  # worst .. best
    reward = make_collaborative(tmp_path)
    picked = [items[order[-1]], items[order[0]], items[order[2]], "unknown"]
    got = reward(item=picked, history=[["i0", "i1"]] * 4)
    assert got == pytest.approx([1.0, 0.0, 0.5, 0.0])


def test_registry_builds_by_name_with_weights_in_order() -> None:
    ctx = RewardContext(num_generations=2, sid_codes={"t": (1, 2), "a": (1, 0)})
    funcs, weights = build_rewards({"semantic": 0.5, "hit": 2.0}, ctx)
    assert [f.__name__ for f in funcs] == ["semantic", "hit"] and weights == [0.5, 2.0]
    total = weighted_sum(funcs, weights, item=["t", "a"], target=["t", "t"])
    assert total == pytest.approx([0.5 * 1 + 2.0, 0.5 * 0.5])
    with pytest.raises(ConfigError, match="unknown 'hits'"):
        build_rewards({"hits": 1.0}, ctx)
    with pytest.raises(ConfigError, match="needs the run's SASRec"):
        build_rewards({"collaborative": 1.0}, ctx)


def novelty(item: list[str | None], **_: Any) -> list[float | None]:
    """A user's reward: any function with TRL's signature."""
    return [None if i is None else float(len(i)) for i in item]


def test_a_user_reward_is_a_function_named_module_colon_function() -> None:
    ctx = RewardContext(num_generations=2, sid_codes={})
    funcs, _ = build_rewards({f"{__name__}:novelty": 1.0}, ctx)
    assert funcs[0](item=["ab", None], prompts=["p", "p"]) == [2.0, None]
    with pytest.raises(ConfigError, match="cannot import"):
        build_rewards({f"{__name__}:missing": 1.0}, ctx)
