"""The SFT stage's typed config: model source, fine-tuning mode, LoRA, data and training knobs.

Loaded like every stage config (``load_config(SFTStageConfig, "recipes/sft/tiny-cpu.yaml",
["training.max_steps=50"])``); the recipes under ``recipes/sft/`` are short YAML files over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmrec.config import ConfigError

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
    """What goes into TRL's SFTConfig (a subset of transformers' TrainingArguments)."""

    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs (max_steps wins)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1: use epochs"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "transformers scheduler: linear, cosine, constant, ..."}
    )
    warmup_steps: float = field(
        default=0.03, metadata={"help": "warmup steps; a value below 1 is a fraction of all steps"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimizer name"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "micro-batch size"})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "eval micro-batch"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per optimizer step (global_batch_size wins)"}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "examples per optimizer step over all processes; sets gradient "
            "accumulation from the launch's world size (MiniOneRec style)"
        },
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "batch examples of similar length (less padding)"}
    )
    seed: int = field(default=42, metadata={"help": "model init (tiny), shuffling, dropout"})
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N steps"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept for resume"})
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep <run>/sft.checkpoints/ after a finished run"}
    )
    eval_steps: int = field(
        default=0,
        metadata={
            "help": "every N steps: validation loss and the injected eval function (0: never)"
        },
    )
    report_to: str | list[str] = field(
        default="none", metadata={"help": "none, tensorboard, wandb (or a list)"}
    )
    run_name: str | None = field(default=None, metadata={"help": "run name for wandb et al."})
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
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers"})
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "processes for tokenizing the dataset"}
    )


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
    training: TrainingSection = field(default_factory=TrainingSection)


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
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        raise ConfigError("set training.max_steps or training.num_train_epochs")
    if t.global_batch_size is not None and t.global_batch_size <= 0:
        raise ConfigError(f"training.global_batch_size must be positive, got {t.global_batch_size}")
    if t.eval_steps < 0 or t.save_steps <= 0 or t.logging_steps <= 0:
        raise ConfigError("training.eval_steps ≥ 0, save_steps > 0 and logging_steps > 0")


def accumulation_steps(t: TrainingSection, world_size: int) -> int:
    """Gradient accumulation: from ``global_batch_size`` when set, else as configured."""
    if t.global_batch_size is None:
        return t.gradient_accumulation_steps
    per_step = t.per_device_train_batch_size * world_size
    if t.global_batch_size % per_step:
        raise ConfigError(
            f"training.global_batch_size={t.global_batch_size} is not a multiple of "
            f"per_device_train_batch_size × processes = {t.per_device_train_batch_size} × "
            f"{world_size}"
        )
    return t.global_batch_size // per_step
