"""Constrained validation during training: configured by the stage's ``validation`` section,
its Recall/NDCG@10 logged beside the loss in metrics.json, the same from ``llmrec train sft`` and
from ``accelerate launch -m llmrec.train.sft``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmrec.cli import main as cli_main
from llmrec.config import load_config
from llmrec.train.config import SFTStageConfig
from llmrec.train.sft import train_sft
from tests.train.conftest import TINY

VALIDATION = ["training.eval_steps=2", "validation.users=10", "validation.num_beams=10"]


def _validation_rows(folder: Path) -> list[dict]:
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    return [
        {k: v for k, v in row.items() if k.startswith("val_") or k == "step"}
        for row in history
        if "val_ndcg@10" in row
    ]


@pytest.mark.slow
def test_constrained_validation_is_logged_beside_the_loss(run: Path) -> None:
    cfg = load_config(SFTStageConfig, None, [*TINY, *VALIDATION])
    folder = train_sft(cfg, run)
    evals = _validation_rows(folder)
    assert [row["step"] for row in evals] == [2, 4]  # every eval_steps, and the last step
    for row in evals:
        assert 0.0 <= row["val_ndcg@10"] <= row["val_recall@10"] <= 1.0
        assert row["val_invalid@10"] == 0.0  # constrained: only real items, always 10
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    assert any("loss" in row for row in history)


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_validation_as_the_cli(run: Path, tmp_path: Path) -> None:
    """One config, two entry points: the same training and the same validation metrics."""
    other = tmp_path / "launched"
    shutil.copytree(run, other)
    assert cli_main(["train", "sft", "--run", str(run), *TINY, *VALIDATION]) == 0
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "llmrec.train.sft",
        "--run-dir",
        str(other),
        *TINY,
        *VALIDATION,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    by_cli, launched = _validation_rows(run / "sft"), _validation_rows(other / "sft")
    assert [r["step"] for r in by_cli] == [2, 4]
    assert launched == by_cli
