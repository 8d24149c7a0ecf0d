"""The per-user stage: LoRA adapters per cluster of users (and per heavy user), or a gated
mixture of expert LoRAs, on the merged SFT model → ``<run>/per_user/``.

``llmrec train per-user --run runs/ml100k`` (or ``python -m llmrec.train.per_user``) merges
the SFT stage into a plain checkpoint (``llmrec export``: the SID rows live in the base, so
every adapter holds LoRA matrices only, as vLLM's multi-LoRA needs), groups the users
(``user_groups.py``) and trains all groups' adapters at once as slices of one LoRA
(``gated_lora.py``): one ``train_stage`` call, one TRL ``SFTTrainer`` — keys, checkpoints,
resume and the atomic stage folder come from the harness unchanged. Modes:

- ``clusters``: one rank-``r`` adapter per k-means cluster (+ one per heavy user), each
  trained on its own users' examples only;
- ``mixture``: ``clusters`` expert slices mixed per user by a gate (iLoRA-style); each user's
  mixture is itself a plain rank-``K·r`` LoRA, cut on first use;
- ``shared``: one rank-``r`` adapter for everyone, the same steps on all users' examples (the
  control that separates personalisation from more training).

The stage folder holds ``model/`` (the sliced LoRA, gate included), ``adapters/<name>/`` (plain
PEFT folders), ``router.json`` (user → adapter; users it does not list get the SFT model),
``model_info.json`` (``base``: the SFT export it applies to) and the harness's usual files.
``llmrec.load(run, "per_user")``, ``llmrec eval ... models=[per_user]`` and ``llmrec serve
stage=per_user`` route each user to their adapter (``llmrec.recommend.routing``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec.config import ConfigError, load_config
from llmrec.run import CONFIG, DATA, INSTRUCT, MODEL, ROUTER, SIDS, RunLayout
from llmrec.train.config import (
    DEFAULT_TARGET_MODULES,
    SFTStageConfig,
    TrainingSection,
    ValidationSection,
)
from llmrec.train.stage import (
    BuiltTrainer,
    StagePlan,
    TrainingContext,
    check_trl_keys,
    module_main,
    train_stage,
)
from llmrec.train.user_groups import Mode, UserGroups

logger = logging.getLogger(__name__)

STAGE = "per_user"


@dataclass
class GroupsSection:
    """How users are represented and grouped (see ``llmrec.train.user_groups``)."""

    representation: str = field(
        default="sid_prefix",
        metadata={"help": "sid_prefix: histogram of the SID prefixes of the training history"},
    )
    prefix_levels: int = field(
        default=1, metadata={"help": "SID levels whose prefixes are counted", "min": 1}
    )
    clusters: int = field(
        default=8, metadata={"help": "k-means clusters (mixture: expert slices)", "min": 1}
    )
    kmeans_iters: int = field(default=50, metadata={"help": "k-means iterations", "min": 1})
    heavy_min_interactions: int = field(
        default=0,
        metadata={
            "help": "users with at least this many training interactions get their own "
            "adapter (0: none)",
            "min": 0,
        },
    )
    max_heavy_users: int = field(
        default=16, metadata={"help": "at most this many heavy users", "min": 0}
    )


@dataclass
class AdapterSection:
    """Each adapter (slice): a small LoRA."""

    r: int = field(default=8, metadata={"help": "rank of one adapter (slice)", "min": 1})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha of one adapter", "min": 1})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input", "min": 0})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "module names that get adapters"},
    )


# A few hundred steps of a small LoRA on a model that already knows the catalog.
PER_USER_TRL_DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "max_steps": 200,
    "learning_rate": 1e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "optim": "adamw_torch",
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 32,
    "logging_steps": 20,
    "save_steps": 100,
    "save_total_limit": 2,
}


@dataclass
class PerUserStageConfig:
    """Per-cluster / per-user LoRA adapters on the merged SFT model."""

    mode: Mode = field(
        default="clusters",
        metadata={
            "help": "clusters (an adapter per cluster), mixture (gated experts, an "
            "adapter per user) or shared (one adapter for all: the control)"
        },
    )
    base: str = field(default="sft", metadata={"help": "the trained stage the adapters start from"})
    groups: GroupsSection = field(default_factory=GroupsSection)
    lora: AdapterSection = field(default_factory=AdapterSection)
    gate_temperature: float = field(
        default=0.5,
        metadata={
            "help": "mixture: the gate starts as soft k-means at this temperature "
            "(× the mean squared distance to the own centroid)",
            "min": 1e-6,
        },
    )
    max_length: int = field(default=512, metadata={"help": "tokens per example", "min": 1})
    completion_only_loss: bool | None = field(
        default=None, metadata={"help": "loss on the completion only (None: as the base stage)"}
    )
    train_samples: int | None = field(
        default=None, metadata={"help": "train on a seeded random subset of this many examples"}
    )
    validation_size: int = field(
        default=0, metadata={"help": "validation examples for the eval loss (0: none)", "min": 0}
    )
    training: TrainingSection = field(
        default_factory=lambda: TrainingSection(trl=dict(PER_USER_TRL_DEFAULTS))
    )
    validation: ValidationSection = field(default_factory=lambda: ValidationSection(users=0))


def check_config(cfg: PerUserStageConfig) -> None:
    """Every check that needs no data or model."""
    if cfg.groups.representation != "sid_prefix":
        raise ConfigError(
            f"groups.representation: only sid_prefix, got {cfg.groups.representation!r}"
        )
    if cfg.validation.users:
        raise ConfigError(
            "validation.users must be 0 for the per-user stage (each user needs their own "
            "adapter): evaluate after training with `llmrec eval --run RUN models=[per_user]`"
        )
    if cfg.mode == "shared" and cfg.groups.heavy_min_interactions:
        raise ConfigError("mode=shared trains one adapter for all: set heavy_min_interactions=0")
    check_trl_keys(per_user_plan(cfg))


def _datasets(cfg: PerUserStageConfig, layout: RunLayout, rows: dict[str, int]) -> tuple[Any, Any]:
    """Train (and validation) prompt/completion rows with each example's user-table row."""
    from datasets import load_from_disk

    data = load_from_disk(str(layout.instruct_dir), keep_in_memory=True)
    seed = cfg.training.seed

    def prepare(split: str, limit: int | None) -> Any:
        ds = data[split].select_columns(["prompt", "completion", "user_id"])
        ds = ds.filter(lambda b: [str(u) in rows for u in b["user_id"]], batched=True)
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=seed).select(range(limit))
        ds = ds.map(lambda b: {"gate_row": [rows[str(u)] for u in b["user_id"]]}, batched=True)
        return ds.remove_columns("user_id")

    train = prepare("train", cfg.train_samples)
    val = prepare("validation", cfg.validation_size) if cfg.validation_size else None
    return train, val


def build_per_user(cfg: PerUserStageConfig, ctx: TrainingContext) -> BuiltTrainer:
    """The merged base, the user groups, a sliced LoRA and the gated ``SFTTrainer``."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.data.prepare import PreparedData
    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.train.export import export_model
    from llmrec.train.gated_lora import GATE_MODULE, GatedSFTTrainer, SliceGate, UserGate
    from llmrec.train.user_groups import build_groups

    layout = ctx.layout
    if ctx.state.is_main_process:
        export_model(layout, cfg.base)  # skipped when the export is up to date
    ctx.state.wait_for_everyone()
    base_dir = layout.export(cfg.base).path
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)

    table = PreparedData.load(layout.root).split.table
    g = cfg.groups
    groups = build_groups(
        table["user_id"].astype(str).tolist(),
        [list(map(str, h)) for h in table["train_items"]],
        SemanticIdMap.load(layout.sid_map_file),
        clusters=g.clusters,
        prefix_levels=g.prefix_levels,
        heavy_min_interactions=g.heavy_min_interactions,
        max_heavy_users=g.max_heavy_users,
        kmeans_iters=g.kmeans_iters,
        seed=cfg.training.seed,
    )
    weights, gated = groups.slice_table(cfg.mode)
    slices = weights.shape[1]
    experts = groups.k if cfg.mode == "mixture" else 0
    if experts:
        model.add_module(GATE_MODULE, UserGate(*groups.gate_init(cfg.gate_temperature)))
    peft_config = LoraConfig(
        # The scale alpha / r of the whole LoRA equals each slice's (see adapters.slice_lora).
        r=cfg.lora.r * slices,
        lora_alpha=cfg.lora.alpha * slices,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=[GATE_MODULE] if experts else None,
        task_type="CAUSAL_LM",
    )
    rows = {u: i for i, u in enumerate(groups.users)}
    train_ds, val_ds = _datasets(cfg, layout, rows)
    gate = SliceGate(weights, gated, groups.features, cfg.lora.r, experts)
    trainer = GatedSFTTrainer(
        model=model,
        args=ctx.args,
        train_dataset=train_ds,
        eval_dataset=val_ds if ctx.args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        gate=gate,
    )
    info = {
        "finetune": "lora",
        "model": str(base_dir),
        "revision": None,
        "base": {"kind": "stage", "stage": cfg.base, "key": layout.key(cfg.base)},
        "dtype": "float32",
        "vocab_rows": int(model.config.vocab_size),
        "seed": ctx.args.seed,
        "router": ROUTER,
        "mode": cfg.mode,
        "slices": slices,
        "slice_rank": cfg.lora.r,
    }

    def write_extra(staging: Path) -> None:
        write_router(staging, ctx.key, cfg, groups, gate)

    return BuiltTrainer(trainer, tokenizer, info, write_extra=write_extra)


def write_router(
    staging: Path, key: str, cfg: PerUserStageConfig, groups: UserGroups, gate: Any
) -> None:
    """``router.json`` and the plain adapter folders, from the trained sliced LoRA in
    ``staging/model`` (mixture adapters, one per user, are cut on first use instead)."""
    import torch

    from llmrec.recommend.adapters import AdapterSpec, Router, export_slices, safe_name

    with torch.no_grad():
        device = next(gate.gate.parameters()).device if gate.gate is not None else "cpu"
        if gate.gate is not None:
            gate.gate.eval()
        final = gate.weights(torch.arange(len(groups.users), device=device)).float().cpu().numpy()
    adapters: dict[str, AdapterSpec] = {}
    users: dict[str, str] = {}
    heavy = set(groups.heavy)

    def folder(name: str) -> str:
        return f"adapters/{safe_name(name)}"

    if cfg.mode == "shared":
        adapters["shared"] = AdapterSpec({0: 1.0}, folder("shared"))
    else:
        for k in range(groups.k if cfg.mode == "clusters" else 0):
            adapters[f"cluster-{k}"] = AdapterSpec({k: 1.0}, folder(f"cluster-{k}"))
        for h, u in enumerate(groups.heavy):
            name = f"user-{groups.users[u]}"
            adapters[name] = AdapterSpec({groups.k + h: 1.0}, folder(name))
    for u, user in enumerate(groups.users):
        if cfg.mode == "shared":
            users[user] = "shared"
        elif u in heavy:
            users[user] = f"user-{user}"
        elif cfg.mode == "clusters":
            users[user] = f"cluster-{int(groups.clusters[u])}"
        else:  # mixture: the user's gate over the expert slices, cut on first use
            weights = {s: float(final[u, s]) for s in range(groups.k) if final[u, s] > 0}
            adapters[f"user-{user}"] = AdapterSpec(weights, None)
            users[user] = f"user-{user}"
    for spec in adapters.values():
        if spec.path is not None:
            export_slices(staging / MODEL, staging / spec.path, cfg.lora.r, cfg.lora.alpha, spec)
    router = Router(
        staging,
        key,
        cfg.mode,
        groups.n_slices(cfg.mode),
        cfg.lora.r,
        float(cfg.lora.alpha),
        adapters,
        users,
        {user: int(c) for user, c in zip(groups.users, groups.clusters, strict=True)},
    )
    extra = {
        "representation": {
            "kind": cfg.groups.representation,
            "prefix_levels": cfg.groups.prefix_levels,
            "dim": int(groups.features.shape[1]),
        },
        "clusters_k": groups.k,
        "heavy_users": [groups.users[u] for u in groups.heavy],
    }
    router.save(extra)
    logger.info("router: %d users over %d adapters (%s)", len(users), len(adapters), cfg.mode)


def per_user_plan(cfg: PerUserStageConfig) -> StagePlan:
    """The per-user stage as the training harness runs it."""
    from trl import SFTConfig

    return StagePlan(
        stage=STAGE,
        config=cfg,
        upstream=(DATA, SIDS, INSTRUCT, cfg.base),
        trl_config=SFTConfig,
        build=lambda ctx: build_per_user(cfg, ctx),
        forced={
            "max_length": cfg.max_length,
            # One row per example: the slice weights are per row.
            "packing": False,
            "padding_free": False,
            "completion_only_loss": cfg.completion_only_loss,
        },
        eval_loss=cfg.validation_size > 0,
    )


def train_per_user(
    cfg: PerUserStageConfig,
    run: str | Path,
    force: bool = False,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    eval_fn: Any = None,
) -> Path:
    """Run the per-user stage into ``<run>/per_user/`` (skipped when done with this config)."""
    layout = RunLayout.of(run)
    layout.stage(cfg.base).require(f"llmrec train {cfg.base} --run {layout.root}")
    if cfg.completion_only_loss is None:  # train as the SFT stage did (prompt too, or not)
        sft = cfg.base == "sft"
        base_cfg = load_config(SFTStageConfig, layout.root / cfg.base / CONFIG) if sft else None
        cfg.completion_only_loss = base_cfg.completion_only_loss if base_cfg else True
    check_config(cfg)
    plan = per_user_plan(cfg)
    return train_stage(plan, run, force=force, resume=resume, callbacks=callbacks, eval_fn=eval_fn)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmrec.train.per_user``: the entry point every launcher process runs."""
    return module_main("python -m llmrec.train.per_user", PerUserStageConfig, train_per_user, argv)


if __name__ == "__main__":
    sys.exit(main())
