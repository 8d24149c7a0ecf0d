"""Typed configs of the preference-alignment stages: GRPO (``GRPOStageConfig``) and DPO
(``DPOStageConfig``), both starting from the run's SFT model.

Loaded like every stage config (``load_config(GRPOStageConfig, "recipes/grpo/tiny-cpu.yaml")``);
the ``training`` section passes every other key to TRL's ``GRPOConfig`` / ``DPOConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmrec.config import ConfigError
from llmrec.train.config import LoraSection, TrainingSection, ValidationSection

Finetune = Literal["full", "lora"]


@dataclass
class WindowsSection:
    """Training windows: (history → next item) pairs cut from each user's training items."""

    per_user: int | None = field(
        default=8,
        metadata={
            "help": "the most recent windows of each user (None: every window); the last "
            "ones are the closest to the held-out items",
            "min": 1,
        },
    )
    samples: int | None = field(
        default=None,
        metadata={"help": "then a seeded random subset of this many windows", "min": 1},
    )
    min_history: int = field(
        default=3, metadata={"help": "shortest history a window may have", "min": 1}
    )


@dataclass
class RolloutSection:
    """How GRPO draws the G completions of a prompt: always catalog items, through the trie."""

    mode: Literal["beam", "sample"] = field(
        default="beam",
        metadata={
            "help": "beam: G distinct items by constrained beam search (the beam rank goes to "
            "the rewards; MiniOneRec/ReRe); sample: G constrained samples from the policy "
            "(on-policy, duplicates allowed and counted)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call", "min": 1})


@dataclass
class GRPOStageConfig:
    """GRPO on training windows from the SFT model, with constrained rollouts and ranking
    rewards (``llmrec train grpo``)."""

    finetune: Finetune = field(
        default="full",
        metadata={
            "help": "full: continue the SFT model's weights (the reference is a frozen copy); "
            "lora: a new adapter on the merged SFT export (the reference: adapter disabled)"
        },
    )
    lora: LoraSection = field(default_factory=LoraSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    rewards: dict[str, float] = field(
        default_factory=lambda: {"hit": 1.0, "ranking": 1.0},
        metadata={
            "help": "reward name → weight: hit, ranking, ranking_above, collaborative, "
            "semantic, or 'package.module:function' (a TRL reward function; see "
            "llmrec.train.rewards)"
        },
    )
    windows: WindowsSection = field(default_factory=WindowsSection)
    training: TrainingSection = field(
        default_factory=lambda: TrainingSection(trl=dict(GRPO_TRL_DEFAULTS))
    )
    validation: ValidationSection = field(default_factory=ValidationSection)

    def __post_init__(self) -> None:
        # A recipe's training section adds to these defaults instead of replacing them.
        self.training.trl = {**GRPO_TRL_DEFAULTS, **self.training.trl}


@dataclass
class NegativesSection:
    """The rejected items of DPO pairs."""

    source: Literal["beam", "random"] = field(
        default="beam",
        metadata={
            "help": "beam: the policy's highest-ranked wrong items (constrained beam search, "
            "the target banned inside the search); random: catalog items drawn uniformly"
        },
    )
    per_prompt: int = field(
        default=4, metadata={"help": "negatives per prompt (one pair each)", "min": 1}
    )
    exclude_history: bool = field(
        default=False,
        metadata={"help": "never use an item of the history as a negative"},
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per beam search", "min": 1})


@dataclass
class DPOStageConfig:
    """DPO (or S-DPO) on hard negatives from the SFT model, optionally in iterative rounds
    (``llmrec train dpo``)."""

    finetune: Finetune = field(
        default="full",
        metadata={
            "help": "full: continue the SFT model's weights (the reference is a frozen copy); "
            "lora: a new adapter on the merged SFT export (the reference: adapter disabled)"
        },
    )
    lora: LoraSection = field(default_factory=LoraSection)
    negatives: NegativesSection = field(default_factory=NegativesSection)
    loss: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={
            "help": "TRL loss_type list (e.g. [sigmoid, sft]), or [sdpo] / [sdpo, sft]: "
            "softmax over a prompt's negatives (S-DPO)"
        },
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "one weight per loss (default: all 1)"}
    )
    rounds: int = field(
        default=1,
        metadata={
            "help": "iterative DPO: negatives regenerated with the current policy at the start "
            "of each round; max_steps is split evenly, each round ends in a checkpoint",
            "min": 1,
        },
    )
    windows: WindowsSection = field(default_factory=WindowsSection)
    training: TrainingSection = field(
        default_factory=lambda: TrainingSection(trl=dict(DPO_TRL_DEFAULTS))
    )
    validation: ValidationSection = field(default_factory=ValidationSection)

    def __post_init__(self) -> None:
        # A recipe's training section adds to these defaults instead of replacing them.
        self.training.trl = {**DPO_TRL_DEFAULTS, **self.training.trl}


# llmrec's GRPO defaults where they differ from TRL's GRPOConfig. G = 16, β = 1e-3 and lr 1e-5
# are MiniOneRec's (rl.sh: num_generations 16, beta 1e-3, learning_rate 1e-5), for pretrained
# models; the tiny recipe sets its own. disable_dropout: rollouts and loss see the same network.
GRPO_TRL_DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "num_generations": 16,
    "beta": 1e-3,
    "learning_rate": 1e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "optim": "adamw_torch",
    "disable_dropout": True,
    "save_total_limit": 2,
}

# DPO: β 0.1 (TRL's default and S-DPO's), lr 1e-5 for pretrained models.
DPO_TRL_DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "beta": 0.1,
    "learning_rate": 1e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "optim": "adamw_torch",
    "save_total_limit": 2,
}

SDPO = "sdpo"


def validate_grpo(cfg: GRPOStageConfig) -> None:
    """Reject GRPO configs that cannot work, before any model is loaded."""
    if not cfg.rewards:
        raise ConfigError("rewards: name at least one reward, e.g. {hit: 1.0}")
    g = int(cfg.training.trl.get("num_generations", 16))
    if g < 2:
        raise ConfigError("training.num_generations must be at least 2 (GRPO compares a group)")
    if cfg.finetune == "lora" and cfg.lora.r <= 0:
        raise ConfigError(f"lora.r must be positive, got {cfg.lora.r}")


def validate_dpo(cfg: DPOStageConfig) -> None:
    """Reject DPO configs that cannot work, before any model is loaded."""
    if not cfg.loss:
        raise ConfigError("loss: name at least one loss, e.g. [sigmoid]")
    if SDPO in cfg.loss and not set(cfg.loss) <= {SDPO, "sft"}:
        raise ConfigError(f"loss: sdpo combines with sft only, got {cfg.loss}")
    if cfg.loss_weights is not None and len(cfg.loss_weights) != len(cfg.loss):
        raise ConfigError("loss_weights: one weight per loss")
    if cfg.finetune == "lora" and cfg.lora.r <= 0:
        raise ConfigError(f"lora.r must be positive, got {cfg.lora.r}")
    steps = int(cfg.training.trl.get("max_steps", -1))
    if cfg.rounds > 1 and (steps <= 0 or steps % cfg.rounds):
        raise ConfigError(
            f"rounds={cfg.rounds}: set training.max_steps to a multiple of the rounds"
        )
    batch = int(cfg.training.trl.get("per_device_train_batch_size", 8))
    if SDPO in cfg.loss and batch % cfg.negatives.per_prompt:
        raise ConfigError(
            "loss sdpo needs whole prompts in a batch: per_device_train_batch_size "
            f"({batch}) must be a multiple of negatives.per_prompt ({cfg.negatives.per_prompt})"
        )
