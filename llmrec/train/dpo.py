"""The DPO stage: TRL's ``DPOTrainer`` on hard negatives from the SFT model → ``<run>/dpo/``.

``llmrec train dpo --run runs/ml100k --config recipes/dpo/tiny-cpu.yaml`` (or ``python -m
llmrec.train.dpo``). Pairs come from training windows: chosen = the item that came next,
rejected = the policy's own highest-ranked wrong items (constrained beam search with the target
banned inside the search) or random catalog items, ``negatives.per_prompt`` pairs per prompt,
tokenised exactly as inference sees them (prompt ids from the run's prompt format, completions =
the item's trie tokens). ``RecDPOTrainer`` is a small subclass of TRL's trainer that adds:

- pre-tokenised pairs (no text round trip);
- ``loss: [sdpo]`` — S-DPO (Chen et al. 2024): one softmax over a prompt's negatives,
  ``-log σ(-log Σ_j exp(β(r_j − r_chosen)))``, with ``r = log π/π_ref``; a prompt's pairs sit
  in one batch (a sampler that shuffles whole prompts); ``sft`` may be added. Every other loss
  list is TRL's own ``loss_type`` with ``loss_weights``;
- iterative rounds (OneRec-style): ``max_steps`` split into ``rounds``; at the end of a round
  the current policy mines the next round's negatives and a checkpoint is written, and the
  next round resumes from it. Each round's pairs are kept in the checkpoint folder, so a killed
  run resumes exactly. The reference stays the SFT model.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler
from transformers import TrainerCallback
from trl import DPOTrainer

from llmrec.config import ConfigError
from llmrec.io import write_json_atomic
from llmrec.recommend.prompting import RunDecoding
from llmrec.train.align_config import SDPO, DPOStageConfig, NegativesSection, validate_dpo
from llmrec.train.policy import Window
from llmrec.train.stage import (
    BuiltTrainer,
    StagePlan,
    TrainingContext,
    check_trl_keys,
    module_main,
    train_stage,
)

logger = logging.getLogger(__name__)

STAGE = "dpo"


@dataclass
class RoundPairs:
    """Each round's negatives: read from ``folder/round-<r>.json`` or mined with the model."""

    decoding: RunDecoding
    windows: list[Window]
    negatives: NegativesSection
    seed: int
    folder: Path
    state: Any  # accelerate's PartialState

    def path(self, r: int) -> Path:
        """Where round ``r``'s negatives are kept."""
        return self.folder / f"round-{r}.json"

    def mine(self, r: int, model: Any) -> None:
        """Mine round ``r``'s negatives with ``model`` (every process takes a share; the main
        process writes them)."""
        from accelerate.utils import gather_object

        from llmrec.recommend.hf import HFRecommender
        from llmrec.train.rollouts import hard_negatives

        k = self.negatives.per_prompt
        n, p = len(self.windows), self.state.num_processes
        i = self.state.process_index
        mine = self.windows[i * n // p : (i + 1) * n // p]
        if self.negatives.source == "beam":
            was_training = model.training
            model.eval()
            try:
                rec = HFRecommender(model, self.decoding.prompts, self.decoding.trie, mode="beam")
                part = hard_negatives(
                    rec, mine, k, self.negatives.exclude_history, self.negatives.batch_size
                )
            finally:
                model.train(was_training)
        else:
            part = random_negatives(
                mine,
                self.decoding.trie.item_ids,
                k,
                self.negatives.exclude_history,
                np.random.default_rng([self.seed, r, i]),
            )
        negatives = gather_object(part) if p > 1 else part
        if any(len(row) < k for row in negatives):
            raise ConfigError(f"negatives.per_prompt={k}: the catalog has too few other items")
        if self.state.is_main_process:
            write_json_atomic(self.path(r), {"round": r, "negatives": negatives})
        self.state.wait_for_everyone()

    def dataset(self, r: int, model: Any | None = None) -> Any:
        """Round ``r``'s pairs, pre-tokenised, a prompt's ``per_prompt`` rows in a row."""
        from datasets import Dataset

        if not self.path(r).is_file():
            if model is None:
                raise RuntimeError(f"{self.path(r)} is missing: rerun with --force")
            logger.info("mining round %d's negatives (%s)", r, self.negatives.source)
            self.mine(r, model)
        negatives = json.loads(self.path(r).read_text(encoding="utf-8"))["negatives"]
        from llmrec.train.rollouts import item_tokens

        tokens = item_tokens(self.decoding)
        rows: dict[str, list[Any]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
        for window, rejected in zip(self.windows, negatives, strict=True):
            prompt = self.decoding.prompts.encode(window.history)
            for item in rejected[: self.negatives.per_prompt]:
                rows["prompt_ids"].append(prompt)
                rows["chosen_ids"].append(tokens[window.target])
                rows["rejected_ids"].append(tokens[item])
        return Dataset.from_dict(rows)


def random_negatives(
    windows: Sequence[Window],
    catalog: Sequence[str],
    k: int,
    exclude_history: bool,
    rng: np.random.Generator,
) -> list[list[str]]:
    """Per window, ``k`` distinct catalog items drawn uniformly, never the target."""
    pool = np.asarray(catalog)
    out = []
    for w in windows:
        banned = {w.target, *(w.history if exclude_history else ())}
        allowed = pool[~np.isin(pool, list(banned))]
        out.append([str(x) for x in rng.choice(allowed, min(k, len(allowed)), replace=False)])
    return out


class GroupSampler(Sampler[int]):
    """Shuffles whole groups of ``group`` consecutive rows (a prompt's pairs stay together);
    a new seeded order per epoch."""

    def __init__(self, n_rows: int, group: int, seed: int) -> None:
        self.n_rows, self.group, self.seed, self.epoch = n_rows, group, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order ``__iter__`` gives."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_rows

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(
            self.n_rows // self.group
        )
        return iter((order[:, None] * self.group + np.arange(self.group)).reshape(-1).tolist())


class NextRound(TrainerCallback):
    """At the end of each round but the last: mine the next round's negatives with the current
    policy, save a checkpoint, stop (``RecDPOTrainer.train`` resumes into the next round)."""

    def __init__(self, trainer: RecDPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        """Mine before the save, so a round-end checkpoint always has its next round's pairs."""
        t = self.trainer
        if state.global_step % t.steps_per_round or state.global_step >= state.max_steps:
            return
        with torch.no_grad():
            t.pairs.mine(state.global_step // t.steps_per_round, model)
        control.should_save = True
        control.should_training_stop = True


class RecDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with pre-tokenised pairs, S-DPO, and iterative rounds (module doc)."""

    def __init__(
        self,
        *args: Any,
        pairs: RoundPairs,
        rounds: int = 1,
        losses: Sequence[str] = ("sigmoid",),
        loss_weights: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.pairs, self.rounds = pairs, rounds
        self.group = pairs.negatives.per_prompt
        self.sdpo = SDPO in losses
        self.sdpo_weights = dict(zip(losses, loss_weights or [1.0] * len(losses), strict=True))
        super().__init__(*args, **kwargs)
        self.steps_per_round = max(1, self.args.max_steps // rounds)
        if rounds > 1:
            self.add_callback(NextRound(self))

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        """Pairs arrive tokenised (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)."""
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, name)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """S-DPO: whole prompts per batch."""
        if not self.sdpo:
            return super()._get_train_sampler(train_dataset)
        dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
        return GroupSampler(len(dataset), self.group, int(self.args.seed))

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        """TRL's loss, or S-DPO (+ sft) over each prompt's group of negatives."""
        if not self.sdpo:
            return super()._compute_loss(model, inputs, return_outputs)
        mode = "train" if model.training else "eval"
        mask = inputs["completion_mask"]
        shift = mask[:, 1:]
        skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        model_kwargs = {k: v for k, v in inputs.items() if k not in skip}
        labels = inputs["input_ids"].masked_fill(mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        per_token = outputs.log_probs[:, -shift.size(1) :] * shift
        chosen, rejected = per_token.sum(1).chunk(2)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model or model, inputs)
        chosen_r, rejected_r = chosen - ref_chosen, rejected - ref_rejected
        margin = (rejected_r - chosen_r).view(-1, self.group)  # [prompts, negatives]
        sdpo = -F.logsigmoid(-torch.logsumexp(self.beta * margin, dim=1))
        loss = self.sdpo_weights[SDPO] * sdpo.mean()
        if "sft" in self.sdpo_weights:
            half = shift.chunk(2)[0].bool()
            nll = -outputs.log_probs[:, -shift.size(1) :].chunk(2)[0][half].mean()
            loss = loss + self.sdpo_weights["sft"] * nll
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(self.beta * chosen_r.detach()).mean().item())
        metrics["rewards/rejected"].append(gather(self.beta * rejected_r.detach()).mean().item())
        wins = (chosen_r > rejected_r).float().detach()
        metrics["rewards/accuracies"].append(gather(wins).mean().item())
        metrics["rewards/margins"].append(gather(-margin.detach() * self.beta).mean().item())
        metrics["logps/chosen"].append(gather(chosen.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """One ``Trainer.train`` per round, each resuming from the last round's checkpoint."""
        if self.rounds == 1:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        step = _checkpoint_step(resume_from_checkpoint)
        result = None
        for r in range(min(step // self.steps_per_round, self.rounds - 1), self.rounds):
            if r > 0 or step > 0:
                self.train_dataset = self.pairs.dataset(r)
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            resume_from_checkpoint = str(
                Path(str(self.args.output_dir)) / f"checkpoint-{self.state.global_step}"
            )
        return result


def _checkpoint_step(checkpoint: str | bool | None) -> int:
    if not isinstance(checkpoint, str):
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])


def build_dpo(cfg: DPOStageConfig, ctx: TrainingContext) -> BuiltTrainer:
    """The SFT policy, round 0's pairs (mined by it) → ``RecDPOTrainer``."""
    from llmrec.train.policy import load_policy, stop_at_item_end, window_dataset

    seed = int(ctx.args.seed)
    policy = load_policy(ctx.layout, cfg.finetune, cfg.lora, ctx.state, seed)
    decoding = RunDecoding.load(ctx.layout, policy.tokenizer)
    stop_at_item_end(policy.model, decoding.trie.end_token_id)
    _, by_text = window_dataset(ctx.layout, decoding, cfg.windows, seed)
    pairs = RoundPairs(
        decoding,
        list(by_text.values()),
        cfg.negatives,
        seed,
        ctx.checkpoint_dir / "rounds",
        ctx.state,
    )
    dataset = pairs.dataset(0, policy.model)
    logger.info(
        "DPO: %d prompts × %d negatives (%s), loss %s, %d round(s)",
        len(by_text),
        cfg.negatives.per_prompt,
        cfg.negatives.source,
        cfg.loss,
        cfg.rounds,
    )
    trainer = RecDPOTrainer(
        model=policy.model,
        args=ctx.args,
        train_dataset=dataset,
        processing_class=policy.tokenizer,
        peft_config=policy.peft_config,
        pairs=pairs,
        rounds=cfg.rounds,
        losses=cfg.loss,
        loss_weights=cfg.loss_weights,
    )
    info = {
        **policy.info,
        "loss": list(cfg.loss),
        "negatives": cfg.negatives.source,
        "rounds": cfg.rounds,
    }
    return BuiltTrainer(trainer, policy.tokenizer, info)


def dpo_plan(cfg: DPOStageConfig, pretrained: bool = True) -> StagePlan:
    """The DPO stage as the training harness runs it."""
    from trl import DPOConfig

    # S-DPO's own loss replaces TRL's; with one negative it *is* TRL's sigmoid loss.
    trl_losses = ["sigmoid" if name == SDPO else name for name in cfg.loss]
    forced: dict[str, Any] = {"loss_type": trl_losses, "loss_weights": cfg.loss_weights}
    return StagePlan(
        stage=STAGE,
        config=cfg,
        upstream=("sft",),
        trl_config=DPOConfig,
        build=lambda ctx: build_dpo(cfg, ctx),
        pretrained=pretrained,
        forced=forced,
    )


def check_config(cfg: DPOStageConfig) -> None:
    """Every check that needs no data or model."""
    validate_dpo(cfg)
    check_trl_keys(dpo_plan(cfg))
    if cfg.rounds > 1 and cfg.training.trl.get("precompute_ref_log_probs"):
        raise ConfigError("precompute_ref_log_probs covers round 0's pairs only: use rounds=1")


def train_dpo(
    cfg: DPOStageConfig,
    run: str | Path,
    force: bool = False,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    eval_fn: Any = None,
) -> Path:
    """Run the DPO stage into ``<run>/dpo/`` (skipped when done with this config)."""
    from llmrec.train.policy import sft_is_pretrained

    check_config(cfg)
    plan = dpo_plan(cfg, pretrained=sft_is_pretrained(run))
    return train_stage(plan, run, force=force, resume=resume, callbacks=callbacks, eval_fn=eval_fn)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmrec.train.dpo``: the entry point every launcher process runs."""
    return module_main("python -m llmrec.train.dpo", DPOStageConfig, train_dpo, argv)


if __name__ == "__main__":
    sys.exit(main())
