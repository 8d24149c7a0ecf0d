"""The SFT stage: TRL's ``SFTTrainer`` on the instruct stage's dataset → ``<run>/sft/``.

``llmrec train sft --run runs/ml100k --config recipes/sft/tiny-cpu.yaml`` (or ``python -m
llmrec.train.sft`` with the same arguments, which is what ``accelerate launch -m`` and
``torchrun -m`` start once per process; torchrun needs ``--run-dir``) trains a tiny model from
scratch or fine-tunes a pretrained one (full, LoRA, QLoRA) and writes ``<run>/sft/``:

- ``model/``: a transformers checkpoint (full) or a PEFT adapter (LoRA), with the tokenizer;
- ``base_model/``: LoRA on a tiny model only — the frozen base (a HF base is named in
  ``sft_info.json`` and reloaded from the hub/folder);
- ``sid_map.json``, ``config.yaml`` (resolved config), ``sft_info.json`` (how to reload),
  ``metrics.json`` (final metrics, every log line, per-rank step counts), ``tensorboard/``.

The stage folder appears only once complete (``StageDir``). Checkpoints live outside it, in
``<run>/sft.checkpoints/<config hash>/`` with a ``log.jsonl``, so a crash loses at most
``save_steps`` steps: rerunning the same command resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrec.config import ConfigError, config_hash, dump_yaml, load_config, to_dict
from llmrec.io import StageDir, write_json_atomic
from llmrec.train.config import (
    LoraSection,
    SFTStageConfig,
    TrainingSection,
    accumulation_steps,
    validate,
)

if TYPE_CHECKING:
    from llmrec.train.callbacks import EvalFn

logger = logging.getLogger(__name__)

__all__ = [
    "LoraSection",
    "SFTStageConfig",
    "TrainingSection",
    "add_sft_arguments",
    "format_summary",
    "latest_checkpoint",
    "main",
    "sft_training_args",
    "train_sft",
]

STAGE = "sft"


def checkpoint_root(run: Path, key: str) -> Path:
    """Where checkpoints of the run with config hash ``key`` go (kept across crashes)."""
    return run / f"{STAGE}.checkpoints" / key


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``folder``, or None.

    ``Trainer`` writes ``trainer_state.json`` last, so a checkpoint cut short by a crash has none
    and is skipped.
    """
    found: list[tuple[int, Path]] = []
    for path in folder.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def sft_training_args(cfg: SFTStageConfig, output_dir: Path, run_name: str) -> Any:
    """TRL's ``SFTConfig`` for ``cfg``, with every CPU-relevant default set explicitly."""
    import torch
    from trl import SFTConfig

    from llmrec.train.peft_setup import bf16_supported, resolve_gradient_checkpointing

    t = cfg.training
    eval_on = t.eval_steps > 0 and cfg.validation_size > 0
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation_steps(t, world_size),
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=t.eval_steps if eval_on else None,
        report_to=t.report_to,
        run_name=t.run_name or run_name,
        # TRL defaults both to True; on CPU bf16 autocast is slow and checkpointing only costs.
        bf16=bf16_supported() if t.bf16 == "auto" else t.bf16,
        fp16=False,
        gradient_checkpointing=resolve_gradient_checkpointing(cfg),
        dataloader_num_workers=t.dataloader_num_workers,
        dataset_num_proc=t.dataset_num_proc,
        max_length=cfg.max_length,
        packing=cfg.packing,
        completion_only_loss=cfg.completion_only_loss,
        use_cpu=not torch.cuda.is_available(),
        # Every trainable parameter (adapters, SID rows, or all weights) is used in every step.
        ddp_find_unused_parameters=False,
    )


def _check_tokenizer(cfg: SFTStageConfig, instruct_tokenizer: str) -> None:
    if cfg.model == "tiny" or instruct_tokenizer == cfg.model:
        return
    if instruct_tokenizer == "tiny":
        raise ConfigError(
            f"model={cfg.model!r} but the instruct stage used the tiny local tokenizer; rebuild "
            f"it with the model's tokenizer: llmrec instruct build --run RUN tokenizer={cfg.model}"
        )
    logger.warning(
        "the instruct stage's tokenizer is %r, the model %r: make sure they match",
        instruct_tokenizer,
        cfg.model,
    )


def _warn_truncated(dataset: Any, max_length: int) -> None:
    if "input_ids" not in dataset.column_names:
        return
    n = sum(len(ids) >= max_length for ids in dataset["input_ids"])
    if n:
        logger.warning(
            "%d of %d training examples reach max_length=%d and lose their end "
            "(completion included): raise max_length or lower max_history",
            n,
            len(dataset),
            max_length,
        )


def train_sft(
    cfg: SFTStageConfig,
    run: str | Path,
    force: bool = False,
    resume: bool = True,
    eval_fn: EvalFn | None = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Run the SFT stage into ``<run>/sft/`` (skipped when done with this config); returns it.

    ``resume`` continues from the newest checkpoint of an interrupted run with the same config;
    ``force`` retrains from scratch. ``eval_fn(model, tokenizer) -> {name: value}`` is called
    every ``training.eval_steps`` and at the end, its metrics logged as ``val_<name>``.
    ``callbacks`` are extra ``TrainerCallback`` s. Call it on every process of a distributed
    launch: all ranks train, rank 0 writes the stage.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.tokens import sid_token_ids
    from llmrec.train.callbacks import (
        JsonlLogCallback,
        PeriodicEvalCallback,
        StepCounterCallback,
    )
    from llmrec.train.data import instruct_config, load_sft_datasets
    from llmrec.train.peft_setup import (
        build_model,
        embeddings_tied,
        lora_config,
        patch_trainable_tokens_bias,
        require_qlora,
    )

    run = Path(run)
    validate(cfg)
    if cfg.finetune == "qlora":
        require_qlora()  # before any data or model is loaded
    instruct = StageDir(run, "instruct")
    instruct_dir = instruct.require(f"llmrec instruct build --run {run}")
    sids_dir = StageDir(run, "sids").require(f"llmrec index build --run {run}")
    stage = StageDir(run, STAGE)
    key = config_hash(
        {"sft": to_dict(cfg), "instruct": (instruct.done_info() or {}).get("config_hash")}
    )
    if not force and stage.is_done(key):
        logger.info("%s is up to date (config %s); skipping", stage.path, key)
        return stage.path
    _check_tokenizer(cfg, instruct_config(instruct_dir).tokenizer)

    ckpt_dir = checkpoint_root(run, key)
    args = sft_training_args(cfg, ckpt_dir, f"{run.name}-{STAGE}")
    state = PartialState()  # created by the args above: one process of a launch, or the only one
    if state.is_main_process:
        if force and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    last = latest_checkpoint(ckpt_dir) if resume else None
    logger.info(
        "checkpoints and log.jsonl in %s%s",
        ckpt_dir,
        f"; resuming from {last.name}" if last else "",
    )

    tokenizer = AutoTokenizer.from_pretrained(instruct_dir / "tokenizer")
    sid_ids = sid_token_ids(tokenizer, SemanticIdMap.load(sids_dir / "sid_map.json"))
    train_ds, val_ds = load_sft_datasets(cfg, run)
    model = build_model(cfg, tokenizer, sid_ids)
    base_info = {
        "tied": embeddings_tied(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "vocab_rows": int(model.get_input_embeddings().weight.shape[0]),
    }
    saved_base = cfg.finetune != "full" and cfg.model == "tiny"
    if saved_base and state.is_main_process:
        # A from-config base cannot be fetched again by name: keep it beside the adapter.
        model.save_pretrained(ckpt_dir / "base_model")
    counter = StepCounterCallback()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds if args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model, sid_ids) if cfg.finetune != "full" else None,
        callbacks=[JsonlLogCallback(ckpt_dir / "log.jsonl"), counter, *callbacks],
    )
    if patched := patch_trainable_tokens_bias(trainer.model):
        logger.debug("patched %d TrainableTokensWrapper(s) with a bias attribute", patched)
    if eval_fn is not None:
        every = cfg.training.eval_steps or sys.maxsize  # 0: only after the last step
        trainer.add_callback(PeriodicEvalCallback(eval_fn, tokenizer, every, log=trainer.log))
    if not cfg.packing and state.is_main_process:
        _warn_truncated(trainer.train_dataset, cfg.max_length)
    wrapped: Any = trainer.model  # the PeftModel under LoRA
    params = [(p.numel(), p.requires_grad) for p in wrapped.parameters()]
    logger.info(
        "%s fine-tuning: %s of %s parameters trainable",
        cfg.finetune,
        f"{sum(n for n, grad in params if grad):,}",
        f"{sum(n for n, _ in params):,}",
    )

    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    ranks = gather_object([{"rank": state.process_index, "steps": counter.steps}])

    staging = ckpt_dir / "final"
    if state.is_main_process and staging.exists():
        shutil.rmtree(staging)
    state.wait_for_everyone()
    trainer.save_model(str(staging / "model"))  # collective under FSDP / ZeRO-3
    if state.is_main_process:
        tokenizer.save_pretrained(staging / "model")
        if saved_base:
            shutil.move(ckpt_dir / "base_model", staging / "base_model")
        shutil.copy(sids_dir / "sid_map.json", staging / "sid_map.json")
        (staging / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
        info = {
            "finetune": cfg.finetune,
            "model": cfg.model,
            "revision": cfg.revision,
            "base_model": "base_model" if saved_base else None,
            **base_info,
            "sid_token_ids": sid_ids,
            "seed": cfg.training.seed,
            "world_size": state.num_processes,
        }
        write_json_atomic(staging / "sft_info.json", info)
        history = trainer.state.log_history
        losses = [row["loss"] for row in history if "loss" in row]
        write_json_atomic(
            staging / "metrics.json",
            {
                "train": result.metrics,
                "global_step": trainer.state.global_step,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "world_size": state.num_processes,
                "ranks": ranks,
                "resumed_from": last.name if last else None,
                "log_history": history,
            },
        )
        if (ckpt_dir / "runs").is_dir():
            shutil.copytree(ckpt_dir / "runs", staging / "tensorboard")

        def fill(tmp: Path) -> dict[str, Any]:
            for entry in staging.iterdir():
                os.replace(entry, tmp / entry.name)
            return {"finetune": cfg.finetune, "global_step": trainer.state.global_step}

        stage.build(key, fill, force=True)
        if not cfg.training.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            if not any(ckpt_dir.parent.iterdir()):
                ckpt_dir.parent.rmdir()
    state.wait_for_everyone()
    return stage.path


def format_summary(folder: Path) -> str:
    """Steps, runtime, first and last training loss, and where the model is."""
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    info = json.loads((folder / "sft_info.json").read_text(encoding="utf-8"))
    train = metrics["train"]
    evals = [
        row for row in metrics["log_history"] if any(k.startswith(("eval_", "val_")) for k in row)
    ]
    lines = [
        f"{info['finetune']} fine-tuning of {info['model']}: {metrics['global_step']} steps on "
        f"{metrics['world_size']} process(es) in {train.get('train_runtime', 0):.0f} s",
        f"training loss: {metrics['first_loss']} → {metrics['last_loss']}",
    ]
    if evals:
        last = {k: v for k, v in evals[-1].items() if k.startswith(("eval_loss", "val_"))}
        lines.append("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    lines.append(f"model: {folder / 'model'}")
    return "\n".join(lines)


def add_sft_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run``, ``--config``, ``--force``, ``--no-resume`` and ``key=value`` overrides."""
    # --run-dir: torchrun's parser rejects `--run` after the script as an ambiguous prefix of its
    # own --run-path; `--run-dir` passes through to the script.
    parser.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        default="runs/ml100k",
        help="run directory (default runs/ml100k)",
    )
    parser.add_argument("--config", type=Path, help="YAML config (see recipes/sft/)")
    parser.add_argument("--force", action="store_true", help="retrain from scratch")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="ignore checkpoints of an interrupted run with the same config",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. training.max_steps=100",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmrec.train.sft``: the entry point every launcher process runs."""
    parser = argparse.ArgumentParser(
        prog="python -m llmrec.train.sft",
        description="Supervised fine-tuning into <run>/sft/ (see `llmrec train sft --help`).",
    )
    add_sft_arguments(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cfg = load_config(SFTStageConfig, args.config, args.overrides)
        folder = train_sft(cfg, args.run, force=args.force, resume=not args.no_resume)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"llmrec.train.sft: error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(format_summary(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
