"""The SFT stage: TRL's ``SFTTrainer`` on the instruct stage's dataset → ``<run>/sft/``.

``llmrec train sft --run runs/ml100k --config recipes/sft/tiny-cpu.yaml`` — or ``python -m
llmrec.train.sft`` with the same arguments, which is what ``accelerate launch -m`` and
``torchrun -m`` start once per process (torchrun needs ``--run-dir``) — trains a tiny model from
scratch or fine-tunes a pretrained one (full, LoRA, QLoRA). The harness (``train/stage.py``)
does the rest: keys, checkpoints and resume, validation, and the stage folder: ``model/`` (a
transformers checkpoint or a PEFT adapter, with the tokenizer), ``base_model/`` (LoRA on a tiny
model: the frozen base), ``model_info.json``, ``metrics.json``, ``config.yaml``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmrec.config import ConfigError
from llmrec.run import INSTRUCT, SIDS, RunLayout
from llmrec.train.config import SFTStageConfig, validate
from llmrec.train.stage import (
    BuiltTrainer,
    StagePlan,
    TrainingContext,
    check_trl_keys,
    module_main,
    train_stage,
    trl_kwargs,
)

logger = logging.getLogger(__name__)

STAGE = "sft"


def build_sft(cfg: SFTStageConfig, ctx: TrainingContext) -> BuiltTrainer:
    """The model (tiny from a config, or pretrained with the SID vocabulary; full, LoRA or
    QLoRA) and TRL's ``SFTTrainer`` on the run's prompt/completion rows."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.tokens import sid_token_ids
    from llmrec.train.data import load_sft_datasets
    from llmrec.train.peft_setup import build_model, embeddings_tied, lora_config

    tokenizer = AutoTokenizer.from_pretrained(ctx.layout.tokenizer_dir)
    sid_ids = sid_token_ids(tokenizer, SemanticIdMap.load(ctx.layout.sid_map_file))
    train_ds, val_ds = load_sft_datasets(cfg, ctx.layout.root)
    model = build_model(cfg, tokenizer, sid_ids)
    saved_base = cfg.finetune != "full" and cfg.model == "tiny"
    if saved_base:
        ctx.save_base(model)  # a from-config base cannot be fetched again by name
    info = {
        "finetune": cfg.finetune,
        "model": cfg.model,
        "revision": cfg.revision,
        "base": {"kind": "saved" if saved_base else "hub"} if cfg.finetune != "full" else None,
        "tied": embeddings_tied(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "vocab_rows": int(model.get_input_embeddings().weight.shape[0]),
        "sid_token_ids": sid_ids,
        "seed": ctx.args.seed,
    }
    trainer = SFTTrainer(
        model=model,
        args=ctx.args,
        train_dataset=train_ds,
        eval_dataset=val_ds if ctx.args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model, sid_ids) if cfg.finetune != "full" else None,
    )
    if not cfg.packing and ctx.state.is_main_process:
        _warn_truncated(trainer.train_dataset, cfg.max_length)
    return BuiltTrainer(trainer, tokenizer, info)


def sft_plan(cfg: SFTStageConfig) -> StagePlan:
    """The SFT stage as the training harness runs it."""
    from trl import SFTConfig

    return StagePlan(
        stage=STAGE,
        config=cfg,
        upstream=(SIDS, INSTRUCT),
        trl_config=SFTConfig,
        build=lambda ctx: build_sft(cfg, ctx),
        pretrained=cfg.model != "tiny",
        forced={
            "max_length": cfg.max_length,
            "packing": cfg.packing,
            "completion_only_loss": cfg.completion_only_loss,
        },
        eval_loss=cfg.validation_size > 0,
    )


def train_sft(
    cfg: SFTStageConfig,
    run: str | Path,
    force: bool = False,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    eval_fn: Any = None,
) -> Path:
    """Run the SFT stage into ``<run>/sft/`` (skipped when done with this config); returns it.

    See ``train_stage`` for ``resume``, ``callbacks`` and ``eval_fn``.
    """
    check_config(cfg)
    if cfg.finetune == "qlora":
        from llmrec.train.peft_setup import require_qlora

        require_qlora()  # before any data or model is loaded
    _check_tokenizer(cfg, RunLayout.of(run))
    plan = sft_plan(cfg)
    return train_stage(plan, run, force=force, resume=resume, callbacks=callbacks, eval_fn=eval_fn)


def sft_training_args(cfg: SFTStageConfig, output_dir: str | Path, run_name: str = "sft") -> Any:
    """TRL's ``SFTConfig`` the SFT stage trains with (as ``train_stage`` builds it)."""
    from trl import SFTConfig

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return SFTConfig(**trl_kwargs(sft_plan(cfg), Path(output_dir), run_name, world_size))


def check_config(cfg: SFTStageConfig) -> None:
    """Every check that needs no data or model: combinations and TRL keys."""
    validate(cfg)
    check_trl_keys(sft_plan(cfg))


def _check_tokenizer(cfg: SFTStageConfig, layout: RunLayout) -> None:
    from llmrec.train.data import instruct_config

    layout.stage(INSTRUCT).require(f"llmrec instruct build --run {layout.root}")
    tokenizer = instruct_config(layout.instruct_dir).tokenizer
    if cfg.model == "tiny" or tokenizer == cfg.model:
        return
    if tokenizer == "tiny":
        raise ConfigError(
            f"model={cfg.model!r} but the instruct stage used the tiny local tokenizer; rebuild "
            f"it with the model's tokenizer: llmrec instruct build --run RUN tokenizer={cfg.model}"
        )
    logger.warning(
        "the instruct stage's tokenizer is %r, the model %r: make sure they match",
        tokenizer,
        cfg.model,
    )


def _warn_truncated(dataset: Any, max_length: int) -> None:
    if "input_ids" not in dataset.column_names:
        return
    n = sum(len(ids) >= max_length for ids in dataset["input_ids"])
    if n:
        logger.warning(
            "%d of %d training examples reach max_length=%d and lose their end (completion "
            "included): raise max_length or lower max_history",
            n,
            len(dataset),
            max_length,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmrec.train.sft``: the entry point every launcher process runs."""
    return module_main("python -m llmrec.train.sft", SFTStageConfig, train_sft, argv)


if __name__ == "__main__":
    sys.exit(main())
