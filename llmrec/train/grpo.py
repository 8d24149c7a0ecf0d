"""The GRPO stage: TRL's ``GRPOTrainer`` with constrained rollouts and recommendation rewards,
from the SFT model → ``<run>/grpo/``.

``llmrec train grpo --run runs/ml100k --config recipes/grpo/tiny-cpu.yaml`` — or ``python -m
llmrec.train.grpo`` with the same arguments (what ``accelerate launch -m`` starts per process).
Stock TRL does the algorithm; llmrec adds three things through TRL's own hooks:
``rollout_func`` (``rollouts.py``: G catalog items per prompt by constrained beam search or
constrained sampling, with ``rollouts/invalid`` logged — 0 by construction), reward functions
by name (``rewards.py``), and the SFT model as the policy (``policy.py``: full, or a new LoRA
adapter on the merged SFT export; the reference model is the frozen SFT model either way). The
harness (``stage.py``) does keys, checkpoints and resume, constrained validation
(``val_ndcg@10``) and the stage folder.

On vLLM (``training.use_vllm: true, vllm_mode: server``) sample rollouts run on TRL's vLLM
server with the same trie processor (``vllm_rollouts.py``); beam rollouts always decode with
transformers on the training model. ``docs/alignment.md`` says what of that is tested where.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmrec.run import SASREC
from llmrec.train.align_config import GRPOStageConfig, validate_grpo
from llmrec.train.stage import (
    BuiltTrainer,
    StagePlan,
    TrainingContext,
    check_trl_keys,
    module_main,
    train_stage,
)

logger = logging.getLogger(__name__)

STAGE = "grpo"


def build_grpo(cfg: GRPOStageConfig, ctx: TrainingContext) -> BuiltTrainer:
    """The SFT policy, the window prompts, constrained rollouts, rewards → ``GRPOTrainer``."""
    from trl import GRPOTrainer

    from llmrec.recommend.prompting import RunDecoding
    from llmrec.train.policy import load_policy, stop_at_item_end, window_dataset
    from llmrec.train.rewards import RewardContext, build_rewards
    from llmrec.train.rollouts import Rollouts

    seed = int(ctx.args.seed)
    policy = load_policy(ctx.layout, cfg.finetune, cfg.lora, ctx.state, seed)
    decoding = RunDecoding.load(ctx.layout, policy.tokenizer)
    stop_at_item_end(policy.model, decoding.trie.end_token_id)
    dataset, by_text = window_dataset(ctx.layout, decoding, cfg.windows, seed)
    g = int(ctx.args.num_generations)
    rollouts = Rollouts(
        decoding,
        by_text,
        cfg.rollout.mode,
        g,
        cfg.rollout.batch_size,
        trie_path=ctx.checkpoint_dir / "trie.pt",  # read by a vLLM server (sample mode)
    )
    codes = [tuple(row) for row in decoding.sid_map.codes.tolist()]
    sid_codes = dict(zip(decoding.sid_map.item_ids, codes, strict=True))
    needs_sasrec = "collaborative" in cfg.rewards
    reward_ctx = RewardContext(
        g, sid_codes, ctx.layout.stage(SASREC).path / "model" if needs_sasrec else None
    )
    funcs, _ = build_rewards(cfg.rewards, reward_ctx)
    logger.info(
        "GRPO: %d prompts, G=%d %s rollouts, rewards %s",
        len(dataset),
        g,
        cfg.rollout.mode,
        ", ".join(f"{n}×{w}" for n, w in cfg.rewards.items()),
    )
    trainer = GRPOTrainer(
        model=policy.model,
        reward_funcs=list[Any](funcs),
        args=ctx.args,
        train_dataset=dataset,
        processing_class=policy.tokenizer,
        peft_config=policy.peft_config,
        rollout_func=rollouts,
    )
    info = {**policy.info, "rollout": cfg.rollout.mode, "rewards": dict(cfg.rewards)}
    return BuiltTrainer(trainer, policy.tokenizer, info)


def grpo_plan(cfg: GRPOStageConfig, pretrained: bool = True) -> StagePlan:
    """The GRPO stage as the training harness runs it (``pretrained``: the SFT model is a
    pretrained-size one, for gradient checkpointing under ``auto``)."""
    from trl import GRPOConfig

    forced: dict[str, Any] = {
        "reward_weights": [float(w) for w in cfg.rewards.values()],
        "remove_unused_columns": False,  # history and target reach the rewards
    }
    if cfg.rollout.mode == "beam":
        # Beam rollouts are a deterministic set, not samples: no importance ratio exists.
        forced["vllm_importance_sampling_correction"] = False
    upstream = ("sft", SASREC) if "collaborative" in cfg.rewards else ("sft",)
    return StagePlan(
        stage=STAGE,
        config=cfg,
        upstream=upstream,
        trl_config=GRPOConfig,
        build=lambda ctx: build_grpo(cfg, ctx),
        pretrained=pretrained,
        forced=forced,
    )


def check_config(cfg: GRPOStageConfig) -> None:
    """Every check that needs no data or model."""
    from llmrec.train.rewards import check_names

    validate_grpo(cfg)
    check_names(list(cfg.rewards))
    check_trl_keys(grpo_plan(cfg))


def train_grpo(
    cfg: GRPOStageConfig,
    run: str | Path,
    force: bool = False,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    eval_fn: Any = None,
) -> Path:
    """Run the GRPO stage into ``<run>/grpo/`` (skipped when done with this config)."""
    from llmrec.train.policy import sft_is_pretrained

    check_config(cfg)
    plan = grpo_plan(cfg, pretrained=sft_is_pretrained(run))
    return train_stage(plan, run, force=force, resume=resume, callbacks=callbacks, eval_fn=eval_fn)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmrec.train.grpo``: the entry point every launcher process runs."""
    return module_main("python -m llmrec.train.grpo", GRPOStageConfig, train_grpo, argv)


if __name__ == "__main__":
    sys.exit(main())
