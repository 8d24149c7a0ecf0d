"""The SFT stage's typed config: model source, fine-tuning mode, LoRA, data and training knobs.

Loaded like every stage config (``load_config(SFTStageConfig, "recipes/sft/tiny-cpu.yaml",
["training.max_steps=50"])``); the recipes under ``recipes/sft/`` are short YAML files over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmrec.config import PASSTHROUGH, ConfigError
from llmrec.recommend.base import DEFAULT_BEAMS

FinetuneMode = Literal["full", "lora", "qlora"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]

# Every linear projection of a Qwen2/Llama decoder layer (attention and MLP); the LM head is left
# out on purpose: TRL's fused LM head reads lm_head.weight directly, so an adapter there never trains.
DEFAULT_TARGET_MODULES = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]


@dataclass
class LoraSection:
    """LoRA adapters, and how the embedding rows of the new SID tokens are trained."""

    r: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "module names that get adapters, or ['all-linear']"},
    )
    new_tokens: Literal["trainable_tokens", "modules_to_save"] = field(
        default="trainable_tokens",
        metadata={
            "help": "trainable_tokens: train only the SID rows of the input (and untied "
            "output) embeddings; modules_to_save: train full copies of both matrices"
        },
    )


@dataclass
class TrainingSection:
    """Training arguments: the keys below are llmrec's own; every other key of the section is a
    field of the trainer's TRL config (``SFTConfig``, ``DPOConfig``, ``GRPOConfig``) and reaches
    it as it is, checked against that class when training starts (a new TRL option needs no
    code here)."""

    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "examples per optimizer step over all processes; sets gradient "
            "accumulation from the launch's world size (MiniOneRec style)"
        },
    )
    eval_steps: int = field(
        default=0,
        metadata={
            "help": "every N steps: validation loss and constrained validation "
            "(0: validation once, after the last step)",
            "min": 0,
        },
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep <run>/<stage>.checkpoints/ after a finished run"}
    )
    bf16: Literal["auto"] | bool = field(
        default="auto", metadata={"help": "bf16 mixed precision; auto: where the GPU supports it"}
    )
    gradient_checkpointing: Literal["auto"] | bool = field(
        default="auto",
        metadata={
            "help": "recompute activations to save memory; auto: on CUDA for pretrained "
            "models, off on CPU and for tiny models"
        },
    )
    trl: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            PASSTHROUGH: True,
            "help": "any field of the trainer's TRL config, e.g. learning_rate, max_steps, "
            "per_device_train_batch_size, lr_scheduler_type, save_steps, report_to",
        },
    )

    @property
    def seed(self) -> int:
        """The run's seed (model init, shuffling, dropout): TRL's ``seed`` key."""
        return int(self.trl.get("seed", 42))  # 42: transformers' default


@dataclass
class ValidationSection:
    """Constrained top-K on a fixed sample of validation users while training, logged beside the
    loss as ``val_recall@k``, ``val_ndcg@k`` and ``val_invalid@k`` (every
    ``training.eval_steps``, and after the last step)."""

    users: int = field(default=200, metadata={"help": "validation users (0: off)", "min": 0})
    mode: Literal["beam", "exact"] = field(
        default="beam", metadata={"help": "constrained beam search or exact full ranking"}
    )
    num_beams: int = field(
        default=DEFAULT_BEAMS, metadata={"help": "beam width (beam mode)", "min": 1}
    )
    k: int = field(default=10, metadata={"help": "the cutoff K", "min": 1})
    batch_size: int = field(default=16, metadata={"help": "users per forward pass", "min": 1})


# llmrec's SFT defaults where they differ from TRL's SFTConfig (for a quick CPU run: one epoch,
# a learning rate for LoRA and small models, cosine decay, plain AdamW that runs everywhere).
SFT_TRL_DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "num_train_epochs": 1.0,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "optim": "adamw_torch",
    "per_device_eval_batch_size": 16,
    "save_total_limit": 2,
}


@dataclass
class SFTStageConfig:
    """Supervised fine-tuning on the instruct stage's dataset."""

    model: str = field(
        default="tiny",
        metadata={
            "help": "'tiny' (a small causal LM built from a config, trained from scratch "
            "with the run's tokenizer) or a HF model name/folder"
        },
    )
    revision: str | None = field(default=None, metadata={"help": "HF model revision"})
    arch: Literal["qwen2", "llama"] = field(default="qwen2", metadata={"help": "tiny: family"})
    tiny_hidden_size: int = field(default=128, metadata={"help": "tiny: hidden size"})
    tiny_layers: int = field(default=2, metadata={"help": "tiny: decoder layers"})
    tiny_heads: int = field(default=2, metadata={"help": "tiny: attention heads (head_dim ≥ 32)"})
    tiny_tie_embeddings: bool = field(default=True, metadata={"help": "tiny: tie in/out rows"})
    tiny_attention_dropout: float = field(
        default=0.0, metadata={"help": "tiny: dropout on attention weights (training only)"}
    )
    dtype: Dtype = field(
        default="auto",
        metadata={
            "help": "weights dtype; auto: float32 for full fine-tuning (bf16 autocast "
            "where enabled), bfloat16 under LoRA where supported"
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa, eager, flash_attention_2 (default: transformers')"}
    )
    finetune: FinetuneMode = field(
        default="full",
        metadata={"help": "full | lora | qlora (4-bit base via bitsandbytes; CUDA only)"},
    )
    lora: LoraSection = field(default_factory=LoraSection)
    max_history: int | None = field(
        default=None,
        metadata={
            "help": "items of history in prompts; None: as the instruct stage rendered "
            "them, a number re-renders them (same examples and paraphrases)"
        },
    )
    max_length: int = field(default=512, metadata={"help": "tokens per example (truncated)"})
    packing: bool = field(default=False, metadata={"help": "pack examples into max_length rows"})
    completion_only_loss: bool = field(
        default=True,
        metadata={
            "help": "loss on the completion only; false also trains on the prompt (with "
            "the seqrec_lm task every history item becomes a target)"
        },
    )
    train_samples: int | None = field(
        default=None, metadata={"help": "train on a seeded random subset of this many examples"}
    )
    validation_size: int = field(
        default=256, metadata={"help": "validation examples for the eval loss (0: none)"}
    )
    training: TrainingSection = field(
        default_factory=lambda: TrainingSection(trl=dict(SFT_TRL_DEFAULTS))
    )
    validation: ValidationSection = field(default_factory=ValidationSection)


def validate(cfg: SFTStageConfig) -> None:
    """Reject combinations that cannot work, before any model is loaded."""
    if cfg.finetune == "qlora" and cfg.model == "tiny":
        raise ConfigError("finetune=qlora quantizes a pretrained model; use model=<HF name>")
    if cfg.max_length <= 0:
        raise ConfigError(f"max_length must be positive, got {cfg.max_length}")
    if cfg.max_history is not None and cfg.max_history < 1:
        raise ConfigError(f"max_history must be ≥ 1 or null, got {cfg.max_history}")
    if cfg.lora.r <= 0:
        raise ConfigError(f"lora.r must be positive, got {cfg.lora.r}")
    t = cfg.training
    if t.global_batch_size is not None and t.global_batch_size <= 0:
        raise ConfigError(f"training.global_batch_size must be positive, got {t.global_batch_size}")


def resolve_checkpointing(setting: Literal["auto"] | bool, pretrained: bool) -> bool:
    """Gradient checkpointing on or off; ``auto``: on CUDA for pretrained models only (on CPU
    memory is rarely the limit and recomputation costs ~30 % more time)."""
    if setting != "auto":
        return setting
    import torch

    return torch.cuda.is_available() and pretrained


def accumulation_steps(global_batch_size: int, per_device: int, world_size: int) -> int:
    """Gradient accumulation steps that make ``global_batch_size`` examples per optimizer step."""
    per_step = per_device * world_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"training.global_batch_size={global_batch_size} is not a multiple of "
            f"per_device_train_batch_size × processes = {per_device} × {world_size}"
        )
    return global_batch_size // per_step
