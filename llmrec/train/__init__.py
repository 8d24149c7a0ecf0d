"""Training stages: supervised fine-tuning (full, LoRA, QLoRA) with TRL, launched as one process
or many (``accelerate launch`` / ``torchrun``), and export of the result as one HF checkpoint.

Names are imported on first use: the config classes stay cheap to import (the CLI builds its
help from them) while the trainer pulls in torch, transformers, TRL and PEFT.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmrec.train.callbacks import EvalFn, PeriodicEvalCallback
    from llmrec.train.config import LoraSection, SFTStageConfig, TrainingSection
    from llmrec.train.export import export_model, load_sft_model
    from llmrec.train.peft_setup import patch_trainable_tokens_bias
    from llmrec.train.sft import train_sft

_WHERE = {
    "EvalFn": "callbacks",
    "PeriodicEvalCallback": "callbacks",
    "LoraSection": "config",
    "SFTStageConfig": "config",
    "TrainingSection": "config",
    "export_model": "export",
    "load_sft_model": "export",
    "patch_trainable_tokens_bias": "peft_setup",
    "train_sft": "sft",
}

__all__ = [
    "EvalFn",
    "LoraSection",
    "PeriodicEvalCallback",
    "SFTStageConfig",
    "TrainingSection",
    "export_model",
    "load_sft_model",
    "patch_trainable_tokens_bias",
    "train_sft",
]


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"llmrec.train.{_WHERE[name]}"), name)
