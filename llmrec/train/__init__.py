"""Training stages on one harness (``stage.py``): supervised fine-tuning (full, LoRA, QLoRA) and
preference alignment (GRPO, DPO) with TRL, launched as one process or many (``accelerate
launch`` / ``torchrun``), and export of a trained stage as one HF checkpoint. Loading a trained
model lives in ``llmrec.recommend.loading``.

Names are imported on first use: the config classes stay cheap to import (the CLI builds its
help from them) while the trainer pulls in torch, transformers, TRL and PEFT.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmrec.train.callbacks import EvalFn, PeriodicEvalCallback
    from llmrec.train.config import (
        LoraSection,
        SFTStageConfig,
        TrainingSection,
        ValidationSection,
    )
    from llmrec.train.export import export_model
    from llmrec.train.peft_setup import patch_trainable_tokens_bias
    from llmrec.train.sft import train_sft
    from llmrec.train.stage import StagePlan, train_stage

_WHERE = {
    "EvalFn": "callbacks",
    "PeriodicEvalCallback": "callbacks",
    "LoraSection": "config",
    "SFTStageConfig": "config",
    "TrainingSection": "config",
    "ValidationSection": "config",
    "StagePlan": "stage",
    "train_stage": "stage",
    "export_model": "export",
    "patch_trainable_tokens_bias": "peft_setup",
    "train_sft": "sft",
}

__all__ = [
    "EvalFn",
    "LoraSection",
    "PeriodicEvalCallback",
    "SFTStageConfig",
    "StagePlan",
    "TrainingSection",
    "ValidationSection",
    "export_model",
    "patch_trainable_tokens_bias",
    "train_sft",
    "train_stage",
]


# The trainers ``llmrec train <name>`` runs: (config class, train function, description). Each
# module also runs as ``python -m llmrec.train.<module>`` (what accelerate launch starts).
TRAINERS: dict[str, tuple[str, str, str]] = {
    "sft": (
        "llmrec.train.config:SFTStageConfig",
        "llmrec.train.sft:train_sft",
        "Supervised fine-tuning into <run>/sft (full, LoRA or QLoRA) with TRL's SFTTrainer on "
        "<run>/instruct; checkpoints resume after a crash.",
    ),
    "grpo": (
        "llmrec.train.align_config:GRPOStageConfig",
        "llmrec.train.grpo:train_grpo",
        "GRPO from the SFT model into <run>/grpo with TRL's GRPOTrainer: constrained rollouts "
        "(beam or sample, catalog items only) and recommendation rewards by name (hit, "
        "ranking, collaborative, semantic).",
    ),
    "dpo": (
        "llmrec.train.align_config:DPOStageConfig",
        "llmrec.train.dpo:train_dpo",
        "DPO from the SFT model into <run>/dpo with TRL's DPOTrainer: hard negatives from "
        "constrained beam search, TRL losses or S-DPO, iterative rounds.",
    ),
    "per-user": (
        "llmrec.train.per_user:PerUserStageConfig",
        "llmrec.train.per_user:train_per_user",
        "LoRA adapters per cluster of users (and per heavy user), or a gated mixture of "
        "expert LoRAs, on the merged SFT model, into <run>/per_user with a router "
        "(user → adapter) that eval and serve use.",
    ),
}


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"llmrec.train.{_WHERE[name]}"), name)
