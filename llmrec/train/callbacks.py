"""Trainer callbacks: periodic validation through an injected function, a crash-proof JSONL log
of every logged step, and a per-rank step counter that shows which processes trained."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ProgressCallback

logger = logging.getLogger(__name__)

__all__ = [
    "EvalFn",
    "JsonlLogCallback",
    "PeriodicEvalCallback",
    "StepCounterCallback",
    "TrainingProgressCallback",
]

# eval_fn(model, tokenizer) -> {"recall@10": 0.05, ...}: e.g. constrained top-K recommendation
# on a validation subset. It gets the model in eval mode under torch.no_grad().
EvalFn = Callable[[Any, Any], Mapping[str, float]]


class PeriodicEvalCallback(TrainerCallback):
    """Every ``every`` steps (and at the last step) call ``eval_fn(model, tokenizer)`` and log it.

    The metrics go through ``log`` — the trainer's own ``Trainer.log`` — so they reach every
    ``report_to`` integration and ``state.log_history`` (hence the stage's ``metrics.json``), each
    name prefixed with ``prefix`` (``recall@10`` → ``val_recall@10``). The function runs on every
    process: sharded models (FSDP, ZeRO-3) need all ranks in each forward pass, and under plain
    data parallelism each rank computes the same numbers.
    """

    def __init__(
        self,
        eval_fn: EvalFn,
        tokenizer: Any,
        every: int,
        log: Callable[[dict[str, float]], None],
        prefix: str = "val_",
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be positive, got {every}")
        self.eval_fn = eval_fn
        self.tokenizer = tokenizer
        self.every = every
        self.log = log
        self.prefix = prefix
        self.last_step = -1

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        """Evaluate on the schedule; the trainer passes its (unwrapped) model."""
        step = state.global_step
        if step == self.last_step or (step % self.every and step != state.max_steps):
            return
        self.last_step = step
        self.log(self.evaluate(model))

    def evaluate(self, model: Any) -> dict[str, float]:
        """Run ``eval_fn`` once in eval mode and return its metrics, prefixed and as floats."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                raw = self.eval_fn(model, self.tokenizer)
        finally:
            if was_training:
                model.train()
        metrics = {}
        for name, value in raw.items():
            key = name if name.startswith(self.prefix) else f"{self.prefix}{name}"
            metrics[key] = float(value)
            if not math.isfinite(metrics[key]):
                logger.warning("eval_fn returned a non-finite %s: %r", name, value)
        return metrics


class JsonlLogCallback(TrainerCallback):
    """Append every log line (loss, learning rate, validation metrics) to a JSONL file as it
    happens, from the main process: progress stays readable while training and after a crash."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write one line per log call."""
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


class StepCounterCallback(TrainerCallback):
    """Count the optimizer steps this process took part in (gathered into metrics.json)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """One more step on this rank."""
        self.steps += 1


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class TrainingProgressCallback(ProgressCallback):
    """transformers' progress bar without the evaluation loop's nested bar, whose cursor moves
    garble a log file; the evaluation's results are still logged."""

    def on_prediction_step(self, *args: Any, **kwargs: Any) -> None:
        """No nested bar."""
