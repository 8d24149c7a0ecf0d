"""SASRec on a synthetic cycle: it learns, never peeks at test items, and round-trips."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from llmrec.data import Split, leave_one_out
from llmrec.eval import sasrec
from llmrec.eval.popularity import PopRecommender
from llmrec.eval.protocol import EvalConfig, evaluate
from llmrec.eval.sasrec import SASRecConfig, SASRecRecommender, train_sasrec
from llmrec.recommend.base import Recommender

N_ITEMS = 50
TINY = SASRecConfig(
    max_len=8,
    hidden=32,
    blocks=1,
    heads=2,
    dropout=0.1,
    lr=1e-2,
    batch_size=32,
    max_epochs=40,
    patience=5,
    seed=3,
    device="cpu",
)


def cycle_split(n_users: int = 80, seed: int = 0) -> Split:
    """Each user walks the cycle i → i+1 (mod N_ITEMS) from a random start."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(8, 16))
        rows += [(f"u{u}", f"i{(start + t) % N_ITEMS}", t) for t in range(length)]
    return leave_one_out(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


@pytest.fixture(scope="module")
def trained() -> tuple[Split, SASRecRecommender, list[dict[str, Any]]]:
    split = cycle_split()
    rec, history = train_sasrec(split, TINY, progress=False)
    return split, rec, history


def ndcg(rec: Recommender, split: Split, part: str, exclude_seen: bool = False) -> float:
    cfg = EvalConfig(ks=[10], part=part, bootstrap=0)  # type: ignore[arg-type]
    return evaluate(rec, split, cfg, exclude_seen=exclude_seen).metrics["ndcg@10"]


def test_learns_the_cycle(trained: tuple[Split, SASRecRecommender, list[dict[str, Any]]]) -> None:
    split, rec, _ = trained
    assert isinstance(rec, Recommender)
    pop = ndcg(PopRecommender(split), split, "test")
    assert pop < 0.2  # a near-uniform catalogue: popularity knows nothing here
    assert ndcg(rec, split, "valid") > 0.9
    assert ndcg(rec, split, "test") > 0.9
    assert ndcg(rec, split, "test", exclude_seen=True) > 0.9


def test_best_weights_are_kept(
    trained: tuple[Split, SASRecRecommender, list[dict[str, Any]]],
) -> None:
    split, rec, history = trained
    evaluated = [h for h in history if h["val_ndcg@10"] is not None]
    best = max(evaluated, key=lambda h: h["val_ndcg@10"])
    assert ndcg(rec, split, "valid") == pytest.approx(best["val_ndcg@10"])
    assert {"epoch", "loss", "val_ndcg@10", "seconds"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]


def test_early_stopping_restores_the_best_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scripted validation scores: epoch 2 is the best, then two evaluations without improvement.
    scores = iter([0.1, 0.5, 0.3, 0.5, 0.2, 0.9])
    weights: list[torch.Tensor] = []

    def fake_evaluate(rec: SASRecRecommender, *_: Any, **__: Any) -> SimpleNamespace:
        weights.append(rec.model.items.weight.detach().clone())
        return SimpleNamespace(metrics={"ndcg@10": next(scores)})

    monkeypatch.setattr(sasrec, "evaluate", fake_evaluate)
    cfg = SASRecConfig(**{**TINY.__dict__, "patience": 3, "max_epochs": 10})
    rec, history = train_sasrec(cycle_split(), cfg, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]  # stopped 3 evaluations after 2
    assert torch.equal(rec.model.items.weight, weights[1])
    assert not torch.equal(weights[1], weights[-1])  # restoring actually changed something


def test_epoch_budget_and_eval_every() -> None:
    cfg = SASRecConfig(**{**TINY.__dict__, "max_epochs": 7, "eval_every": 5})
    _, history = train_sasrec(cycle_split(), cfg, progress=False)
    validated = [h["epoch"] for h in history if h["val_ndcg@10"] is not None]
    assert len(history) == 7 and validated == [5, 7]  # every 5th, and the last one


def test_no_test_leakage_and_determinism(
    trained: tuple[Split, SASRecRecommender, list[dict[str, Any]]],
) -> None:
    split, rec, history = trained
    # Rewrite every test target into an item seen nowhere else. Training never reads test
    # items, so the run must be bit-identical, and the new item is outside the vocabulary.
    table = split.table.copy()
    table["test_item"] = "never_trained"
    leaked = Split(split.method, table)
    rec2, history2 = train_sasrec(leaked, TINY, progress=False)
    assert "never_trained" not in rec2.index
    assert [h["val_ndcg@10"] for h in history2] == [h["val_ndcg@10"] for h in history]
    histories = [list(h) for h in split.cases("test")["history"]]
    np.testing.assert_array_equal(rec.score(histories), rec2.score(histories))
    assert ndcg(rec2, leaked, "test") == 0.0
    # Another seed gives another model.
    other, _ = train_sasrec(split, SASRecConfig(**{**TINY.__dict__, "seed": 4}), progress=False)
    assert not np.array_equal(rec.score(histories), other.score(histories))


def test_exclusion_and_unknown_items(
    trained: tuple[Split, SASRecRecommender, list[dict[str, Any]]],
) -> None:
    _, rec, _ = trained
    items, _ = rec.recommend([["i3", "i4"]], 3)
    assert items[0][0] == "i5"
    banned = {"i5", "i6", "i4"}
    items, scores = rec.recommend([["i3", "i4"]], 10, [banned])
    assert not banned & set(items[0]) and len(set(items[0])) == 10
    assert np.isfinite(scores).all() and (np.diff(scores[0]) <= 0).all()
    # Unknown items are skipped; an all-unknown history still gets a full, finite list.
    assert rec.recommend([["zzz", "i3", "i4"]], 1)[0] == [["i5"]]
    items, scores = rec.recommend([["zzz"], []], 5)
    assert all(len(set(row)) == 5 for row in items) and np.isfinite(scores).all()
    everything = [set(rec.items)]
    items, scores = rec.recommend([["i3"]], 4, everything)
    assert items == [[""] * 4] and np.isneginf(scores).all()


def test_save_load_round_trip(
    trained: tuple[Split, SASRecRecommender, list[dict[str, Any]]], tmp_path: Path
) -> None:
    split, rec, _ = trained
    rec.save(tmp_path / "sasrec")
    loaded = SASRecRecommender.load(tmp_path / "sasrec")
    assert loaded.cfg == rec.cfg and loaded.items == rec.items
    histories = [list(h) for h in split.cases("test")["history"]]
    exclude = [set(h) for h in histories]
    a_items, a_scores = rec.recommend(histories, 10, exclude)
    b_items, b_scores = loaded.recommend(histories, 10, exclude)
    assert a_items == b_items
    np.testing.assert_array_equal(a_scores, b_scores)
    assert not list((tmp_path / "sasrec").glob("*.tmp"))
