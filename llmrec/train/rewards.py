"""GRPO rewards for recommendation, pluggable by name with weights (``rewards: {hit: 1.0,
ranking: 1.0}`` in a recipe).

A reward is a TRL reward function: ``f(prompts, completions, completion_ids, **columns) ->
list[float | None]``, one value per completion (None: no opinion; TRL then leaves it out). The
columns are the dataset's (``history``, ``target``) and the rollout's (``item``: the catalog item
the completion names, None if none; ``rank``: its beam rank, or its rank by log-probability
among the group's distinct samples; ``target_rank``: the target's rank in the group, None when
missed; ``logp``). Built in:

- ``hit``: 1 for the target, else 0.
- ``ranking``: MiniOneRec's rank-aware penalty (``rl.py``, ``ndcg_rule_reward``): in a group
  that found the target, every wrong item at rank r gets ``-(1/log2(r+2)) / Σ_j 1/log2(j+2)``
  (an NDCG-shaped discount, normalised over the G ranks), the target 0; a group that missed it
  gets 0 everywhere. ``ranking_above``: the same penalty only for wrong items ranked above the
  target (the ones that cost it NDCG).
- ``collaborative``: the toolkit's SASRec (``<run>/baselines/sasrec``, trained by ``llmrec
  eval``) on the history: the item's percentile among all items (1 = SASRec's favourite).
- ``semantic``: SID prefix overlap with the target: leading code levels shared / levels.

Adding one is writing a function with that signature and naming it in the recipe as
``package.module:function`` (``rewards: {"mypkg.rewards:novelty": 0.5}``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import ConfigError

RewardFunc = Callable[..., list[float | None]]


@dataclass(frozen=True)
class RewardContext:
    """What the built-in rewards may need: the group size, SID codes, where SASRec lives."""

    num_generations: int
    sid_codes: Mapping[str, tuple[int, ...]]
    sasrec_dir: Path | None = None


def hit(item: Sequence[str | None], target: Sequence[str], **_: Any) -> list[float | None]:
    """1.0 when the completion names the target item, else 0.0."""
    return [1.0 if i == t else 0.0 for i, t in zip(item, target, strict=True)]


def rank_penalties(num_generations: int) -> list[float]:
    """MiniOneRec's per-rank penalties: ``-(1/log2(r+2)) / Σ_j 1/log2(j+2)``, r = 0..G-1."""
    discounts = [1.0 / math.log2(r + 2) for r in range(num_generations)]
    total = sum(discounts)
    return [-d / total for d in discounts]


def make_ranking(num_generations: int, above_target_only: bool = False) -> RewardFunc:
    """The rank-aware penalty (see the module docstring)."""
    penalties = rank_penalties(num_generations)

    def ranking(
        item: Sequence[str | None],
        target: Sequence[str],
        rank: Sequence[int],
        target_rank: Sequence[int | None],
        **_: Any,
    ) -> list[float | None]:
        out: list[float | None] = []
        for i, t, r, tr in zip(item, target, rank, target_rank, strict=True):
            if tr is None or i == t or (above_target_only and r > tr):
                out.append(0.0)
            else:
                out.append(penalties[min(r, num_generations - 1)])
        return out

    ranking.__name__ = "ranking_above" if above_target_only else "ranking"
    return ranking


def make_collaborative(sasrec_dir: Path) -> RewardFunc:
    """SASRec's percentile of the item for the history (1 = its top item, 0 = its last)."""
    from llmrec.recommend.sasrec import SASRecScorer

    scorer = SASRecScorer.load(sasrec_dir)
    index = scorer.index

    def collaborative(
        item: Sequence[str | None], history: Sequence[Sequence[str]], **_: Any
    ) -> list[float | None]:
        keys = [tuple(h) for h in history]
        distinct = list(dict.fromkeys(keys))
        scores = dict(zip(distinct, scorer.score(distinct), strict=True))
        out: list[float | None] = []
        for i, key in zip(item, keys, strict=True):
            if i is None or i not in index:
                out.append(0.0)
                continue
            row = scores[key]
            out.append(float((row < row[index[i]]).sum()) / max(len(row) - 1, 1))
        return out

    return collaborative


def make_semantic(sid_codes: Mapping[str, tuple[int, ...]]) -> RewardFunc:
    """Leading SID code levels shared with the target, over the number of levels."""

    def semantic(item: Sequence[str | None], target: Sequence[str], **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for i, t in zip(item, target, strict=True):
            if i is None:
                out.append(0.0)
                continue
            a, b = sid_codes[i], sid_codes[t]
            shared = next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            out.append((min(len(a), len(b)) if shared is None else shared) / max(len(b), 1))
        return out

    return semantic


def _collaborative(ctx: RewardContext) -> RewardFunc:
    if ctx.sasrec_dir is None:
        raise ConfigError("the collaborative reward needs the run's SASRec (run `llmrec eval`)")
    return make_collaborative(ctx.sasrec_dir)


BUILTIN: dict[str, Callable[[RewardContext], RewardFunc]] = {
    "hit": lambda ctx: hit,
    "ranking": lambda ctx: make_ranking(ctx.num_generations),
    "ranking_above": lambda ctx: make_ranking(ctx.num_generations, above_target_only=True),
    "collaborative": _collaborative,
    "semantic": lambda ctx: make_semantic(ctx.sid_codes),
}

NEEDS_SASREC = frozenset({"collaborative"})


def import_reward(name: str) -> RewardFunc:
    """A user's reward function named ``package.module:function``."""
    module, _, attr = name.partition(":")
    try:
        func = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"rewards: cannot import {name!r}: {err}") from None
    if not callable(func):
        raise ConfigError(f"rewards: {name!r} is not callable")
    return func


def check_names(names: Sequence[str]) -> None:
    """Raise for a reward that is neither built in nor ``module:function``."""
    for name in names:
        if name not in BUILTIN and ":" not in name:
            raise ConfigError(
                f"rewards: unknown {name!r}; built in: {', '.join(BUILTIN)}, or "
                "'package.module:function'"
            )


def build_rewards(
    weights: Mapping[str, float], ctx: RewardContext
) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions and their weights, in the recipe's order."""
    check_names(list(weights))
    funcs = [BUILTIN[n](ctx) if n in BUILTIN else import_reward(n) for n in weights]
    return funcs, [float(w) for w in weights.values()]


def weighted_sum(
    funcs: Sequence[RewardFunc], weights: Sequence[float], **columns: Any
) -> np.ndarray:
    """The total reward per completion as TRL combines it (None counts as 0): for tests and
    benchmarks."""
    total = np.zeros(len(columns["item"]))
    for func, w in zip(funcs, weights, strict=True):
        values = func(**columns)
        total += w * np.array([0.0 if v is None else v for v in values])
    return total
