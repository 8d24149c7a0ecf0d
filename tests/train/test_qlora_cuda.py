"""QLoRA (4-bit base through bitsandbytes), the SFT path that only runs on CUDA
(``pytest -m gpu``; skipped without a CUDA device): a few steps on a local model folder, the
loss goes down, the stage's adapters load back and export to a plain checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmrec.train.config import SFTStageConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_qlora_trains_on_a_local_folder(
    run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    pytest.importorskip("bitsandbytes")
    from llmrec.config import load_config
    from llmrec.instruct.build import InstructConfig, build_instruct
    from llmrec.tokens import build_tiny_model, save_tiny, train_tokenizer
    from llmrec.train.export import export_model, load_sft_model
    from llmrec.train.sft import train_sft

    corpus = [f"Film number {i} is a film about things {i % 7}" for i in range(300)]
    tokenizer = train_tokenizer(corpus, vocab_size=500)
    base_dir = save_tiny(
        build_tiny_model(tokenizer, hidden_size=128, num_heads=2, num_layers=2),
        tokenizer,
        tmp_path / "pretrained",
    )
    build_instruct(load_config(InstructConfig, None, [f"tokenizer={base_dir}"]), run, force=True)
    cfg = make_cfg(
        f"model={base_dir}",
        "finetune=qlora",
        "lora.r=4",
        "train_samples=32",
        "training.max_steps=8",
    )
    folder = train_sft(cfg, run)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["global_step"] == 8 and metrics["last_loss"] < metrics["first_loss"]
    info = json.loads((folder / "sft_info.json").read_text())
    assert info["model"] == str(base_dir)
    model, _ = load_sft_model(folder)
    assert any("lora_" in n for n, _ in model.named_parameters())
    assert (export_model(folder, tmp_path / "export") / "config.json").is_file()
