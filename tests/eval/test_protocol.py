"""The evaluation protocol on hand-made splits: exclusion, sampling, popularity, JSON."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.data import leave_one_out
from llmrec.eval.popularity import PopRecommender
from llmrec.eval.protocol import EvalConfig, evaluate
from llmrec.recommend.base import Recommender, Users


def split_of(rows: list[tuple[str, str, int]]):  # type: ignore[no-untyped-def]
    return leave_one_out(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


SPLIT_ROWS = [
    ("u1", "a", 1),
    ("u1", "b", 2),
    ("u1", "a", 3),
    ("u1", "c", 4),  # valid a, test c
    ("u2", "a", 1),
    ("u2", "b", 2),
    ("u2", "d", 3),
    ("u2", "b", 4),  # valid d, test b
    ("u3", "b", 1),
    ("u3", "c", 2),
    ("u3", "a", 3),
    ("u3", "e", 4),  # valid a, test e
]


class Echo:
    """Recommends the history back, newest first (a 'repeat' model)."""

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        out = []
        for u, h in enumerate(histories):
            banned = exclude[u] if exclude else set()
            row = [i for i in dict.fromkeys(reversed(h)) if i not in banned][:k]
            out.append(row + [""] * (k - len(row)))
        return out, np.zeros((len(histories), k))


def test_pop_and_echo_by_hand(tmp_path: Path) -> None:
    split = split_of(SPLIT_ROWS)
    assert isinstance(PopRecommender(split), Recommender)
    # Training counts: b 3, a 2, c 1 → Pop ranks b, a, c.
    pop = evaluate(PopRecommender(split), split, EvalConfig(ks=[1, 3], bootstrap=0))
    # Test targets: u1 c (rank 2), u2 b (rank 0), u3 e (absent).
    assert pop.per_user["rank"].tolist()[:2] == [2, 0] and np.isinf(pop.per_user["rank"][2])
    assert pop.metrics["recall@1"] == pytest.approx(1 / 3)
    assert pop.metrics["recall@3"] == pytest.approx(2 / 3)
    assert pop.metrics["ndcg@3"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
    echo = evaluate(Echo(), split, EvalConfig(ks=[2], bootstrap=0))
    # u2's test history is a, b, d → newest first d, b: target b at rank 1.
    assert echo.per_user["rank"].tolist()[1] == 1
    excluded = evaluate(Echo(), split, EvalConfig(ks=[2], bootstrap=0), exclude_seen=True)
    assert excluded.metrics["recall@2"] == 0.0  # the echo model has nothing left to say
    assert excluded.metrics["invalid@2"] == 1.0  # every slot is empty
    assert excluded.settings["exclude_seen"] is True
    pop.save(tmp_path / "pop.json")
    saved = json.loads((tmp_path / "pop.json").read_text())
    assert saved["metrics"]["recall@1"] == pytest.approx(1 / 3)
    assert (tmp_path / "pop.per_user.parquet").exists()


def test_pop_excludes_seen_items() -> None:
    split = split_of(SPLIT_ROWS)
    items, scores = PopRecommender(split).recommend([["b", "a"]], 3, [{"b", "a"}])
    assert items[0][0] == "c" and items[0][1:] == ["", ""]
    assert np.isneginf(scores[0][1:]).all()


def test_sampling_is_seeded_and_bounded() -> None:
    rows = [(f"u{u}", f"i{(u + t) % 7}", t) for u in range(50) for t in range(5)]
    split = split_of(rows)
    a = evaluate(PopRecommender(split), split, EvalConfig(ks=[5], max_users=10, bootstrap=50))
    b = evaluate(PopRecommender(split), split, EvalConfig(ks=[5], max_users=10, bootstrap=50))
    assert len(a.per_user) == 10 and a.per_user.equals(b.per_user)
    assert a.metrics["recall@5_ci_low"] <= a.metrics["recall@5"] <= a.metrics["recall@5_ci_high"]
