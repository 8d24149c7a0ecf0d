"""Speed part of ``alignment_ml100k.py``: rollouts, rewards and GRPO steps on one model.

Everything runs in one process on the run's SFT model, the timings of the compared settings
interleaved (A, B, C, A, B, C, ...) so that a change of foreign load hits all of them alike;
each figure is the median over ``reps``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from llmrec.config import load_config
from llmrec.data.prepare import PreparedData
from llmrec.recommend.loading import load_model
from llmrec.recommend.prompting import RunDecoding
from llmrec.run import SASREC
from llmrec.train.align_config import GRPOStageConfig, WindowsSection
from llmrec.train.grpo import grpo_plan
from llmrec.train.policy import training_windows, unique_prompts
from llmrec.train.rewards import RewardContext, build_rewards
from llmrec.train.rollouts import Rollouts
from llmrec.train.stage import train_stage

G, PROMPTS = 16, 8  # one GRPO step's rollouts: 8 prompts × 16 completions


class _Trainer:
    """What a rollout function reads from TRL's GRPOTrainer, outside a trainer."""

    def __init__(self, model: Any, temperature: float = 1.0) -> None:
        self.model = model
        self.args = SimpleNamespace(temperature=temperature, top_k=0, top_p=1.0, min_p=None)
        self.accelerator = SimpleNamespace(unwrap_model=lambda m: m, process_index=0)

    def _log_metric(self, name: str, value: float) -> None:
        pass


def copy_run(base: Path, dest: Path) -> None:
    """What the alignment stages read from a run: data, SIDs, prompts/tokenizer, SFT, SASRec."""
    dest.mkdir(parents=True)
    for part in ("data", "sids", "sft", "baselines"):
        if (base / part).is_dir():
            shutil.copytree(base / part, dest / part)
    (dest / "instruct").mkdir()
    for name in ("_DONE.json", "config.yaml", "counts.json"):
        if (base / "instruct" / name).is_file():
            shutil.copy(base / "instruct" / name, dest / "instruct" / name)
    shutil.copytree(base / "instruct" / "tokenizer", dest / "instruct" / "tokenizer")


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def rollouts_and_rewards(base: Path, meter: Any, reps: int) -> dict[str, Any]:
    """Completions/s of constrained beam, constrained sample, unconstrained sample; reward time."""
    model, tokenizer = load_model(base, "sft")
    model.eval()
    decoding = RunDecoding.load(base, tokenizer)
    split = PreparedData.load(base).split
    windows = training_windows(split.table["train_items"].tolist(), WindowsSection(per_user=1), 0)
    by_text = unique_prompts(windows[:PROMPTS], decoding.prompts)
    prompts = [p for p in by_text for _ in range(G)]
    trainer = _Trainer(model)
    beam = Rollouts(decoding, by_text, "beam", G)
    sample = Rollouts(decoding, by_text, "sample", G)
    encoded = [decoding.prompts.encode(by_text[p].history) for p in prompts]

    @torch.inference_mode()
    def free() -> dict[str, Any]:
        from llmrec.train.rollouts import left_pad

        ids, mask = left_pad(encoded, tokenizer.pad_token_id or 0)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=0,
            max_new_tokens=decoding.trie.depth,
            eos_token_id=decoding.trie.end_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        gen = out[:, ids.shape[1] :]
        return {"item": decoding.trie.items_of(gen)}

    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "constrained_beam": lambda: beam(prompts, trainer),
        "constrained_sample": lambda: sample(prompts, trainer),
        "unconstrained_sample": free,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    foreign: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    invalid: dict[str, float] = {}
    last: dict[str, Any] = {}
    for _ in range(reps + 1):  # the first round warms up
        for name, fn in runs.items():
            with meter() as m:
                out = fn()
            times[name].append(m.seconds)
            foreign[name].append(m.foreign)
            cpu[name].append(m.cpu_seconds)
            invalid[name] = sum(i is None for i in out["item"]) / len(out["item"])
            last[name] = out
    rows = [
        {
            "rollout": name,
            "completions": len(prompts),
            "seconds": _median(times[name][1:]),
            "completions_per_s": len(prompts) / _median(times[name][1:]),
            "invalid_share": invalid[name],
            "foreign_cpu_share": _median(foreign[name][1:]),
            "cpu_seconds": _median(cpu[name][1:]),
        }
        for name in runs
    ]
    # Rewards on the beam rollouts of one step (8 prompts × 16).
    out = last["constrained_beam"]
    codes = [tuple(r) for r in decoding.sid_map.codes.tolist()]
    ctx = RewardContext(
        G,
        dict(zip(decoding.sid_map.item_ids, codes, strict=True)),
        base / SASREC / "model" if (base / SASREC / "model").is_dir() else None,
    )
    names = ["hit", "ranking", "semantic"] + (["collaborative"] if ctx.sasrec_dir else [])
    funcs, _ = build_rewards(dict.fromkeys(names, 1.0), ctx)
    columns = {
        "prompts": prompts,
        "completions": [""] * len(prompts),
        "item": out["item"],
        "rank": out["rank"],
        "target_rank": out["target_rank"],
        "target": [by_text[p].target for p in prompts],
        "history": [list(by_text[p].history) for p in prompts],
    }
    reward_ms = {}
    for name, func in zip(names, funcs, strict=True):
        spent = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            func(**columns)
            spent.append(time.perf_counter() - t)
        reward_ms[name] = 1000 * _median(spent[1:])
    return {"rollouts": rows, "reward_ms_per_batch": reward_ms, "batch": len(prompts)}


def _timed(fn: Callable[..., Any], bucket: list[float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - t)

    return wrapper


def grpo_steps(base: Path, work: Path, mode: str, steps: int) -> dict[str, Any]:
    """Seconds per GRPO step (8 prompts × 16) split into rollout / reward / the rest."""
    run = work / f"steps-{mode}"
    shutil.rmtree(run, ignore_errors=True)
    copy_run(base, run)
    cfg = load_config(
        GRPOStageConfig,
        None,
        [
            f"rollout.mode={mode}",
            f"training.max_steps={steps}",
            f"training.per_device_train_batch_size={G * PROMPTS}",
            f"training.num_generations={G}",
            "training.logging_steps=1",
            "training.save_steps=100000",
            "validation.users=0",
            "rewards={hit: 1.0, ranking: 1.0}",
        ],
    )
    plan = grpo_plan(cfg, pretrained=False)
    rollout_s: list[float] = []
    reward_s: list[float] = []

    def build(ctx: Any) -> Any:
        built = plan.build(ctx)
        trainer = built.trainer
        trainer.rollout_func = _timed(trainer.rollout_func, rollout_s)
        trainer.reward_funcs = [_timed(f, reward_s) for f in trainer.reward_funcs]
        return built

    folder = train_stage(dataclasses.replace(plan, build=build), run)
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    step_s = [r["step_time"] for r in history if "step_time" in r]
    n_rewards = len(cfg.rewards)
    per_step_reward = [sum(reward_s[i : i + n_rewards]) for i in range(0, len(reward_s), n_rewards)]
    # Step 1 warms up (first forward passes, allocator): left out.
    rollout, reward, step = (
        _median(rollout_s[1:]),
        _median(per_step_reward[1:]),
        _median(step_s[1:]),
    )
    return {
        "mode": mode,
        "steps": steps,
        "step_s": step,
        "rollout_s": rollout,
        "reward_s": reward,
        "loss_and_update_s": step - rollout - reward,
    }


def measure(base: Path, work: Path, meter: Any, reps: int = 3) -> dict[str, Any]:
    """Every speed figure of the benchmark."""
    work.mkdir(parents=True, exist_ok=True)
    out = rollouts_and_rewards(base, meter, reps)
    out["grpo_steps"] = []
    for mode in ("beam", "sample"):
        with meter() as m:
            row = grpo_steps(base, work, mode, steps=reps + 3)
        row["cpu_seconds_per_step"] = m.cpu_seconds / row["steps"]  # set-up included
        out["grpo_steps"].append({**row, "foreign_cpu_share": m.foreign})
    return out
