"""A small synthetic run (prepared, indexed with random SIDs, instruct built with the tiny local
tokenizer) and tiny-model SFT configs, shared by the training tests. No downloads."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.config import load_config
from llmrec.data import DataConfig, prepare_data
from llmrec.indexing.build import IndexConfig, build_index
from llmrec.instruct.build import InstructConfig, build_instruct
from llmrec.train.config import SFTStageConfig

# A model small enough for a step in milliseconds: 1 layer, hidden 64, 2 heads of 32.
TINY = [
    "model=tiny",
    "tiny_hidden_size=64",
    "tiny_layers=1",
    "tiny_heads=2",
    "max_length=128",
    "validation_size=0",
    "validation.users=0",
    "training.max_steps=4",
    "training.per_device_train_batch_size=4",
    "training.learning_rate=0.01",
    "training.warmup_steps=0",
    "training.logging_steps=1",
    "training.save_steps=100",
    "training.seed=0",
]


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 users × 8 interactions over 40 items, 3 × 8 random SIDs, instructions built."""
    folder = tmp_path_factory.mktemp("train_run")
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{i}", t)
        for u in range(30)
        for t, i in enumerate(rng.choice(40, size=8, replace=False))
    ]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "log.csv", index=False)
    titles = pd.DataFrame(
        {"item": [f"i{i}" for i in range(40)], "title": [f"Film number {i}" for i in range(40)]}
    )
    titles.to_csv(folder / "items.csv", index=False)
    data_cfg = load_config(
        DataConfig,
        None,
        [
            "dataset.name=tabular",
            f"dataset.path={folder / 'log.csv'}",
            f"dataset.item_path={folder / 'items.csv'}",
            "dataset.columns={user_id: user, item_id: item, timestamp: ts}",
            "dataset.item_columns={item_id: item}",
        ],
    )
    run = folder / "run"
    prepare_data(data_cfg, run)
    build_index(load_config(IndexConfig, None, ["method=random", "quantizer.codebook_size=8"]), run)
    build_instruct(load_config(InstructConfig, None, ["tiny_vocab_size=600"]), run)
    return run


@pytest.fixture
def run(synthetic_run: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic run that a test may train into."""
    dest = tmp_path / "run"
    shutil.copytree(synthetic_run, dest)
    return dest


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny test config as ``key=value`` overrides (for command lines)."""
    return list(TINY)


@pytest.fixture
def make_cfg() -> Callable[..., SFTStageConfig]:
    """``make_cfg("finetune=lora", ...)``: the tiny test config plus overrides."""

    def make(*overrides: str) -> SFTStageConfig:
        return load_config(SFTStageConfig, None, [*TINY, *overrides])

    return make
