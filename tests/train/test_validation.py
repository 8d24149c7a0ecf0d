"""Constrained validation during SFT: the CLI's validation function through train_sft, its
Recall/NDCG@10 logged beside the loss in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.config import load_config
from llmrec.eval.validation import make_validation_fn
from llmrec.train.config import SFTStageConfig
from llmrec.train.sft import train_sft
from tests.train.conftest import TINY


@pytest.mark.slow
def test_constrained_validation_is_logged_beside_the_loss(run: Path) -> None:
    cfg = load_config(SFTStageConfig, None, [*TINY, "training.eval_steps=2"])
    validate = make_validation_fn(run, max_users=10, mode="beam", num_beams=10)
    folder = train_sft(cfg, run, eval_fn=validate)
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    evals = [row for row in history if "val_ndcg@10" in row]
    assert [row["step"] for row in evals] == [2, 4]  # every eval_steps, and the last step
    for row in evals:
        assert 0.0 <= row["val_ndcg@10"] <= row["val_recall@10"] <= 1.0
        assert row["val_invalid@10"] == 0.0  # constrained: only real items, always 10
    assert any("loss" in row for row in history)
