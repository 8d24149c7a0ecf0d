"""The instruct stage end to end: a DatasetDict on disk that TRL's SFTTrainer takes as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.cli import main
from llmrec.config import load_config
from llmrec.data import DataConfig, prepare_data
from llmrec.indexing.build import IndexConfig, build_index


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared and indexed run: 40 users, 60 items, random SIDs (no embedding model)."""
    folder = tmp_path_factory.mktemp("instruct")
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{i}", t)
        for u in range(40)
        for t, i in enumerate(rng.choice(60, size=8, replace=False))
    ]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "log.csv", index=False)
    pd.DataFrame(
        {"item": [f"i{i}" for i in range(60)], "title": [f"Film number {i}" for i in range(60)]}
    ).to_csv(folder / "items.csv", index=False)
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
    prepare_data(data_cfg, folder / "run")
    build_index(
        load_config(IndexConfig, None, ["method=random", "quantizer.codebook_size=8"]),
        folder / "run",
    )
    return folder / "run"


def test_cli_builds_a_dataset_dict(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    assert main(["instruct", "build", "--run", str(run), "tiny_vocab_size=600"]) == 0
    out = capsys.readouterr().out
    assert "SID round trip:" in out and "all exact" in out and "[seqrec]" in out
    ds = load_from_disk(str(run / "instruct"))
    assert set(ds) == {"train", "validation", "test"}
    assert len(ds["validation"]) == len(ds["test"]) == 40
    row = ds["test"][0]
    assert row["prompt"][-1]["role"] == "user"  # the tiny tokenizer has a chat template
    assert row["completion"][0]["content"].startswith("<a_")
    assert {"task", "user_id", "history", "target_item"} <= set(ds["train"].column_names)
    counts = json.loads((run / "instruct" / "counts.json").read_text())["counts"]
    # 8 interactions per user: 6 in training, so 5 windows each; one item2sid per catalog item.
    n_items = len(pd.read_parquet(run / "data" / "items.parquet"))
    assert counts["train"]["seqrec"] == 40 * 5 and counts["train"]["item2sid"] == n_items
    tokenizer = AutoTokenizer.from_pretrained(run / "instruct" / "tokenizer")
    sid = row["completion"][0]["content"]
    assert len(tokenizer(sid, add_special_tokens=False)["input_ids"]) == 3


def test_prompt_completion_format(run: Path, tmp_path: Path) -> None:
    from datasets import load_from_disk

    assert (
        main(
            [
                "instruct",
                "build",
                "--run",
                str(run),
                "format=prompt_completion",
                "tiny_vocab_size=600",
            ]
        )
        == 0
    )
    row = load_from_disk(str(run / "instruct"))["validation"][0]
    assert isinstance(row["prompt"], str) and isinstance(row["completion"], str)


@pytest.mark.slow
def test_sft_trainer_takes_the_dataset_as_it_is(run: Path, tmp_path: Path) -> None:
    """Two optimisation steps of TRL's SFTTrainer on the saved dataset and tokenizer."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from llmrec.tokens import build_tiny_model

    assert main(["instruct", "build", "--run", str(run), "tiny_vocab_size=600"]) == 0
    dataset = load_from_disk(str(run / "instruct"))
    tokenizer = AutoTokenizer.from_pretrained(run / "instruct" / "tokenizer")
    model = build_tiny_model(tokenizer, hidden_size=64, num_heads=2, num_layers=1)
    before = model.get_input_embeddings().weight.detach().clone()
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=4,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        logging_steps=1,
        completion_only_loss=True,
        save_strategy="no",
        use_cpu=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset["train"], processing_class=tokenizer
    )
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    assert not torch.equal(before, model.get_input_embeddings().weight.detach())


@pytest.mark.parametrize("fmt", ["auto", "prompt_completion"], ids=["chat", "plain"])
def test_inference_prompt_is_the_trained_prompt(run: Path, tmp_path: Path, fmt: str) -> None:
    """The prompt a recommender builds for a user's history is, token for token, the prompt of
    that user's validation example as TRL's SFTTrainer tokenises it for training."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from llmrec.recommend.prompting import PromptBuilder
    from llmrec.tokens import build_tiny_model

    assert (
        main(["instruct", "build", "--run", str(run), f"format={fmt}", "tiny_vocab_size=600"]) == 0
    )
    rows = load_from_disk(str(run / "instruct"))["validation"].select(range(5))
    assert isinstance(rows[0]["prompt"], list) == (fmt == "auto")
    tokenizer = AutoTokenizer.from_pretrained(run / "instruct" / "tokenizer")
    model = build_tiny_model(tokenizer, hidden_size=32, num_heads=1, num_layers=1)
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), report_to="none", use_cpu=True, max_length=None
    )
    trained = SFTTrainer(model, args, train_dataset=rows, processing_class=tokenizer).train_dataset
    builder = PromptBuilder.from_run(run, tokenizer)
    for row, example in zip(rows, trained, strict=True):
        # TRL masks the prompt out of the labels: what is masked is the prompt it trained on
        n_prompt = next(i for i, label in enumerate(example["labels"]) if label != -100)
        assert builder.encode(row["history"]) == example["input_ids"][:n_prompt], row["user_id"]
