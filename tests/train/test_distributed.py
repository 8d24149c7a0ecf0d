"""Data-parallel SFT on CPU: two processes started by accelerate (with the shipped
recipes/accelerate/cpu_ddp.yaml) or torchrun train together and rank 0 writes the stage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmrec.io import StageDir

RECIPES = Path(__file__).parents[2] / "recipes" / "accelerate"


def _free_port() -> int:
    # Other test runs on the machine may hold torch's default port 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_cpu_processes_train_together(
    launcher: str, run: Path, tiny_overrides: list[str]
) -> None:
    port = str(_free_port())
    if launcher == "accelerate":
        head = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(RECIPES / "cpu_ddp.yaml"),
            "--main_process_port",
            port,
        ]
    else:
        head = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master-port",
            port,
        ]
    command = [
        *head,
        "-m",
        "llmrec.train.sft",
        "--run-dir",
        str(run),
        *tiny_overrides,
        "train_samples=64",
        "training.max_steps=3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert StageDir(run, "sft").is_done()
    metrics = json.loads((run / "sft" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["ranks"] == [{"rank": 0, "steps": 3}, {"rank": 1, "steps": 3}]
    # Each optimizer step saw one micro-batch per rank: 3 steps × 4 examples × 2 ranks.
    assert metrics["train"]["epoch"] == pytest.approx(3 * 4 * 2 / 64)
    info = json.loads((run / "sft" / "model_info.json").read_text())
    assert info["world_size"] == 2
    assert "sft: full training of tiny: 3 steps on 2 process(es)" in done.stdout
