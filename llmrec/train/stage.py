"""The training-stage harness every trainer plugs into: SFT, DPO, GRPO, per-user adapters.

A trainer module describes its stage with a ``StagePlan`` — the stage's name and config, the
stages it reads, its TRL config class, and a ``build`` function that returns a TRL trainer for a
``TrainingContext``. ``train_stage`` does the rest, the same way for every trainer:

- the stage key (config + the keys of the stages it reads): a finished stage with the same key
  is skipped;
- TRL's config from the ``training`` section (llmrec's keys resolved, every other key passed
  through and checked against the TRL class);
- checkpoints in ``<run>/<stage>.checkpoints/<key>/`` with a ``log.jsonl`` of every logged step,
  resumed from the newest complete one after a crash;
- constrained validation (``validation`` section) logged beside the loss;
- process barriers (all ranks train, rank 0 writes), then the model, its tokenizer,
  ``model_info.json`` (how to reload it and where it came from), ``metrics.json``,
  ``training_args.json`` and ``config.yaml``, swapped into ``<run>/<stage>/`` atomically.

``stage_main`` is the one command-line entry of every trainer: ``llmrec train <name>`` and
``accelerate launch -m llmrec.train.<name>`` both run it, so they read the same config and
behave the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec.config import ConfigError, dump_yaml, load_config
from llmrec.console import quiet_upstream
from llmrec.errors import UserError
from llmrec.io import write_json_atomic
from llmrec.run import BASE_MODEL, CONFIG, METRICS, MODEL, MODEL_INFO, SID_MAP, RunLayout
from llmrec.train.config import (
    TrainingSection,
    ValidationSection,
    accumulation_steps,
    resolve_checkpointing,
)

logger = logging.getLogger(__name__)

EvalFn = Callable[[Any, Any], Mapping[str, float]]

# TRL config fields the harness owns: set from the run layout and llmrec's own keys.
RESERVED = ("output_dir", "eval_strategy", "do_eval", "resume_from_checkpoint")


@dataclass
class TrainingContext:
    """What a trainer's ``build`` gets: where it runs, its TRL config, and helpers."""

    layout: RunLayout
    stage: str
    key: str
    checkpoint_dir: Path
    args: Any  # the TRL config (SFTConfig, DPOConfig, GRPOConfig, ...)
    state: Any  # accelerate's PartialState: this process of the launch

    def save_base(self, model: Any) -> None:
        """Keep a from-config base model beside the adapter (call before PEFT wraps it)."""
        target = self.checkpoint_dir / BASE_MODEL
        if self.state.is_main_process and not (target / "config.json").is_file():
            model.save_pretrained(target)


@dataclass
class BuiltTrainer:
    """A trainer ready to train, with what ``model_info.json`` needs to reload its model."""

    trainer: Any
    tokenizer: Any
    info: dict[str, Any]
    write_extra: Callable[[Path], None] | None = None  # more artifacts into the stage folder


@dataclass(frozen=True)
class StagePlan:
    """One training stage, as a trainer module describes it to the harness."""

    stage: str  # the folder: sft, dpo, grpo, per_user
    config: Any  # has .training (TrainingSection) and .validation (ValidationSection)
    upstream: tuple[str, ...]  # stages whose keys enter this one's
    trl_config: type  # SFTConfig, DPOConfig, GRPOConfig, ...
    build: Callable[[TrainingContext], BuiltTrainer]
    pretrained: bool = False  # a pretrained-size model (gradient checkpointing on under auto)
    forced: Mapping[str, Any] = field(default_factory=dict)  # TRL fields the stage sets itself
    eval_loss: bool = False  # the trainer gets an eval dataset (loss every eval_steps)

    @property
    def command(self) -> str:
        """The command that runs this stage."""
        return f"llmrec train {self.stage.replace('_', '-')}"


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


def _field_names(cls: type) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


def check_trl_keys(plan: StagePlan) -> None:
    """Raise unless every TRL key of the training section is a field of the stage's TRL
    config that llmrec does not set itself."""
    fields = _field_names(plan.trl_config)
    for name in plan.config.training.trl:
        if name in RESERVED or name in plan.forced:
            raise ConfigError(
                f"training.{name} is set by llmrec"
                + (f" (from the stage's {name})" if name in plan.forced else "")
            )
        if name not in fields:
            close = (
                difflib.get_close_matches(name, fields, n=3)
                or [f for f in sorted(fields) if name in f][:3]
            )
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"training.{name} is neither an llmrec key nor a field of TRL's "
                f"{plan.trl_config.__name__}{hint}"
            )


def trl_kwargs(plan: StagePlan, output_dir: Path, run_name: str, world_size: int) -> dict:
    """Keyword arguments of the stage's TRL config: llmrec's settings resolved, the training
    section's TRL keys passed through (checked against the class), the stage's own last."""
    import torch

    from llmrec.train.peft_setup import bf16_supported

    section: TrainingSection = plan.config.training
    fields = _field_names(plan.trl_config)
    check_trl_keys(plan)
    checkpointing = resolve_checkpointing(section.gradient_checkpointing, plan.pretrained)
    bf16 = bf16_supported() if section.bf16 == "auto" else section.bf16
    seed = section.trl.get("seed", fields["seed"].default)
    kwargs: dict[str, Any] = {
        "run_name": run_name,
        "logging_first_step": True,
        "save_strategy": "steps",
        "data_seed": seed,
        "fp16": False,
        "use_cpu": not torch.cuda.is_available(),
        # Every trainable parameter (adapters, SID rows, or all weights) is used in every step.
        "ddp_find_unused_parameters": False,
        # The command line quiets transformers' logging to errors, from which TrainingArguments
        # would infer no progress bar (and print every log line twice through PrinterCallback).
        "disable_tqdm": False,
        **section.trl,
        "output_dir": str(output_dir),
        "bf16": bf16,
    }
    # transformers 5 renamed gradient checkpointing; older releases know only the old name.
    new_name = "activation_checkpointing" in fields
    kwargs["activation_checkpointing" if new_name else "gradient_checkpointing"] = checkpointing
    if section.global_batch_size is not None:
        if "gradient_accumulation_steps" in section.trl:
            raise ConfigError(
                "set training.global_batch_size or training.gradient_accumulation_steps, not both"
            )
        per_device = int(
            kwargs.get("per_device_train_batch_size", fields["per_device_train_batch_size"].default)
        )
        kwargs["gradient_accumulation_steps"] = accumulation_steps(
            section.global_batch_size, per_device, world_size
        )
    eval_on = plan.eval_loss and section.eval_steps > 0
    kwargs["eval_strategy"] = "steps" if eval_on else "no"
    kwargs["eval_steps"] = section.eval_steps if eval_on else None
    kwargs.update(plan.forced)
    epochs = kwargs.get("num_train_epochs", fields["num_train_epochs"].default)
    if kwargs.get("max_steps", -1) <= 0 and epochs <= 0:
        raise ConfigError("set training.max_steps or training.num_train_epochs above 0")
    return kwargs


def train_stage(
    plan: StagePlan,
    run: str | Path | RunLayout,
    force: bool = False,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    eval_fn: EvalFn | None = None,
) -> Path:
    """Train ``plan``'s stage into ``<run>/<stage>/`` (skipped when done with this key).

    ``resume`` continues from the newest checkpoint of an interrupted run with the same key;
    ``force`` retrains from scratch; ``callbacks`` are extra ``TrainerCallback`` s;
    ``eval_fn(model, tokenizer) -> {name: value}`` replaces the validation the config
    describes. Call it on every process of a distributed launch: all ranks train, rank 0 writes
    the stage.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from transformers.trainer_callback import ProgressCallback

    from llmrec.train.callbacks import (
        JsonlLogCallback,
        PeriodicEvalCallback,
        StepCounterCallback,
        TrainingProgressCallback,
    )
    from llmrec.train.peft_setup import patch_trainable_tokens_bias

    layout = RunLayout.of(run)
    for name in plan.upstream:
        layout.stage(name).require(f"the {name} stage (see `llmrec --help`) for {layout.root}")
    stage = layout.stage(plan.stage)
    key = layout.stage_key(plan.config, plan.upstream)
    if not force and stage.is_done(key):
        logger.info("%s is up to date (key %s); skipping", stage.path, key)
        return stage.path

    ckpt_dir = layout.checkpoints(plan.stage, key)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    args = plan.trl_config(
        **trl_kwargs(plan, ckpt_dir, f"{layout.root.name}-{plan.stage}", world_size)
    )
    state = PartialState()  # set up by the args above: one process of a launch, or the only one
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

    ctx = TrainingContext(layout, plan.stage, key, ckpt_dir, args, state)
    built = plan.build(ctx)
    trainer = built.trainer
    counter = StepCounterCallback()
    # One progress bar: the training's (the evaluation loop's nested bar garbles logs).
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainingProgressCallback)
    for callback in (JsonlLogCallback(ckpt_dir / "log.jsonl"), counter, *callbacks):
        trainer.add_callback(callback)
    if patched := patch_trainable_tokens_bias(trainer.model):
        logger.debug("patched %d TrainableTokensWrapper(s) with a bias attribute", patched)
    validation: ValidationSection = plan.config.validation
    if eval_fn is None and validation.users > 0:
        from llmrec.train.validation import make_validation_fn

        eval_fn = make_validation_fn(layout, validation, seed=int(args.seed))
    if eval_fn is not None:
        every = plan.config.training.eval_steps or sys.maxsize  # 0: only after the last step
        trainer.add_callback(PeriodicEvalCallback(eval_fn, built.tokenizer, every, trainer.log))
    params = [(p.numel(), p.requires_grad) for p in trainer.model.parameters()]
    logger.info(
        "%s: %s of %s parameters trainable",
        plan.stage,
        f"{sum(n for n, grad in params if grad):,}",
        f"{sum(n for n, _ in params):,}",
    )

    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    ranks = gather_object([{"rank": state.process_index, "steps": counter.steps}])

    staging = ckpt_dir / "final"
    if state.is_main_process and staging.exists():
        shutil.rmtree(staging)
    state.wait_for_everyone()
    trainer.save_model(str(staging / MODEL))  # collective under FSDP / ZeRO-3
    if state.is_main_process:
        _write_stage(plan, layout, key, trainer, built, staging, result, ranks, last, state)
        stage.build(key, lambda tmp: _move_into(staging, tmp, built.info), force=True)
        if not plan.config.training.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            if not any(ckpt_dir.parent.iterdir()):
                ckpt_dir.parent.rmdir()
    state.wait_for_everyone()
    return stage.path


def _write_stage(
    plan: StagePlan,
    layout: RunLayout,
    key: str,
    trainer: Any,
    built: BuiltTrainer,
    staging: Path,
    result: Any,
    ranks: list[Any],
    last: Path | None,
    state: Any,
) -> None:
    """Everything of the finished stage but the model, into ``staging`` (main process)."""
    built.tokenizer.save_pretrained(staging / MODEL)
    saved_base = staging.parent / BASE_MODEL
    if saved_base.is_dir():
        shutil.move(saved_base, staging / BASE_MODEL)
    shutil.copy(layout.sid_map_file, staging / SID_MAP)
    (staging / CONFIG).write_text(dump_yaml(plan.config), encoding="utf-8")
    upstream = {name: layout.key(name) for name in plan.upstream}
    info = {
        "stage": plan.stage,
        "key": key,
        "upstream": upstream,
        "world_size": state.num_processes,
        **built.info,
    }
    write_json_atomic(staging / MODEL_INFO, info)
    write_json_atomic(staging / "training_args.json", trainer.args.to_dict())
    history = trainer.state.log_history
    losses = [row["loss"] for row in history if "loss" in row]
    metrics = {
        "train": result.metrics,
        "global_step": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "world_size": state.num_processes,
        "ranks": ranks,
        "resumed_from": last.name if last else None,
        "log_history": history,
    }
    write_json_atomic(staging / METRICS, metrics)
    if (staging.parent / "runs").is_dir():
        shutil.copytree(staging.parent / "runs", staging / "tensorboard")
    if built.write_extra is not None:
        built.write_extra(staging)


def _move_into(staging: Path, tmp: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    for entry in staging.iterdir():
        os.replace(entry, tmp / entry.name)
    return {"finetune": info.get("finetune")}


def format_summary(folder: Path) -> str:
    """Steps, runtime, first and last training loss, validation, and where the model is."""
    metrics = json.loads((folder / METRICS).read_text(encoding="utf-8"))
    info = json.loads((folder / MODEL_INFO).read_text(encoding="utf-8"))
    train = metrics["train"]
    evals = [
        row for row in metrics["log_history"] if any(k.startswith(("eval_", "val_")) for k in row)
    ]
    lines = [
        f"{info['stage']}: {info.get('finetune', '')} training of {info.get('model', '?')}: "
        f"{metrics['global_step']} steps on {metrics['world_size']} process(es) in "
        f"{train.get('train_runtime', 0):.0f} s",
        f"training loss: {metrics['first_loss']} → {metrics['last_loss']}",
    ]
    if evals:
        last = {k: v for k, v in evals[-1].items() if k.startswith(("eval_loss", "val_"))}
        lines.append("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    lines.append(f"model: {folder / MODEL}")
    return "\n".join(lines)


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run``, ``--config``, ``--force``, ``--no-resume`` and ``key=value`` overrides."""
    # --run-dir: torchrun's parser rejects `--run` after the script as an ambiguous prefix of its
    # own --run-path; `--run-dir` passes through to the script.
    parser.add_argument(
        "--run", "--run-dir", dest="run", default="runs/ml100k", help="run directory"
    )
    parser.add_argument("--config", type=Path, help="YAML config (see recipes/)")
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


def stage_main(
    args: argparse.Namespace,
    config_cls: type,
    train: Callable[..., Path],
) -> int:
    """Load the config, train, print the summary (rank 0): what every trainer's entry runs."""
    rank = int(os.environ.get("RANK", "0"))
    cfg: Any = load_config(config_cls, args.config, args.overrides)
    folder = train(cfg, args.run, force=args.force, resume=not args.no_resume)
    if rank == 0:
        print(format_summary(folder))
    return 0


def module_main(
    prog: str, config_cls: type, train: Callable[..., Path], argv: Sequence[str] | None
) -> int:
    """``python -m llmrec.train.<name>``: what ``accelerate launch -m`` starts per process."""
    parser = argparse.ArgumentParser(prog=prog, description="see `llmrec train --help`")
    add_stage_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="upstream warnings too")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    quiet_upstream(args.verbose)
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return stage_main(args, config_cls, train)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


__all__ = [
    "BuiltTrainer",
    "StagePlan",
    "TrainingContext",
    "add_stage_arguments",
    "format_summary",
    "latest_checkpoint",
    "module_main",
    "stage_main",
    "train_stage",
]
