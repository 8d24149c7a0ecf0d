"""GRPO and DPO end to end on a synthetic run from a tiny SFT model: a step changes the policy
and leaves the reference frozen (full and LoRA), S-DPO with one negative is TRL's sigmoid loss,
resume after a kill equals an uninterrupted run (GRPO; DPO across rounds), the stage folders
reload through ``recommend.loading`` and evaluate beside SFT, Pop and SASRec in one table."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from llmrec.config import load_config
from llmrec.recommend.loading import load_model
from llmrec.recommend.prompting import RunDecoding
from llmrec.run import RunLayout
from llmrec.train.align_config import DPOStageConfig, GRPOStageConfig
from llmrec.train.config import SFTStageConfig
from llmrec.train.dpo import dpo_plan, train_dpo
from llmrec.train.grpo import grpo_plan, train_grpo
from llmrec.train.sft import train_sft
from llmrec.train.stage import train_stage

SFT = [
    "model=tiny",
    "tiny_hidden_size=64",
    "tiny_layers=1",
    "tiny_heads=2",
    "max_length=128",
    "validation_size=0",
    "validation.users=0",
    "training.max_steps=20",
    "training.per_device_train_batch_size=4",
    "training.learning_rate=0.01",
    "training.seed=0",
]

COMMON = [
    "validation.users=8",
    "validation.num_beams=4",
    "windows.per_user=2",
    "training.max_steps=2",
    "training.logging_steps=1",
    "training.save_steps=100",
    "training.learning_rate=0.05",
    "training.warmup_steps=0",
    "training.seed=0",
]
GRPO = [*COMMON, "training.num_generations=4", "training.per_device_train_batch_size=8"]
# semantic varies within a group, so advantages are not all zero on a barely trained model.
GRPO += ["rewards={hit: 1.0, ranking: 1.0, semantic: 1.0}", "training.beta=0.01"]
DPO = [*COMMON, "negatives.per_prompt=2", "training.per_device_train_batch_size=4"]


@pytest.fixture(scope="module")
def sft_run(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("align") / "run"
    shutil.copytree(synthetic_run, run)
    train_sft(load_config(SFTStageConfig, None, SFT), run)
    return run


@pytest.fixture
def run(sft_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(sft_run, dest)
    return dest


def _captured(plan: Any) -> tuple[Any, list[Any]]:
    """The plan, keeping the trainer its build returns."""
    built: list[Any] = []

    def build(ctx: Any) -> Any:
        built.append(plan.build(ctx))
        return built[-1]

    return dataclasses.replace(plan, build=build), built


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _assert_policy_moved_reference_frozen(run: Path, stage: str, trainer: Any) -> None:
    sft = _weights(run / "sft" / "model")
    aligned = _weights(run / stage / "model")
    assert aligned.keys() == sft.keys()
    assert any(not torch.equal(aligned[k], sft[k]) for k in sft), "no parameter changed"
    ref = trainer.ref_model
    assert ref is not None
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in ref.parameters()}
    for name, tensor in ref.state_dict().items():
        if name in sft:
            torch.testing.assert_close(tensor, sft[name], msg=name)


def test_grpo_step_changes_the_policy_and_keeps_the_reference_frozen(run: Path) -> None:
    cfg = load_config(GRPOStageConfig, None, GRPO)
    plan, built = _captured(grpo_plan(cfg, pretrained=False))
    folder = train_stage(plan, run)
    _assert_policy_moved_reference_frozen(run, "grpo", built[0].trainer)
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    assert [r["rollouts/invalid"] for r in history if "rollouts/invalid" in r] == [0.0, 0.0]
    assert any("val_ndcg@10" in r for r in history)
    info = json.loads((folder / "model_info.json").read_text())
    assert info["finetune"] == "full" and info["start"]["stage"] == "sft"
    assert info["rollout"] == "beam" and set(info["rewards"]) == {"hit", "ranking", "semantic"}
    args = json.loads((folder / "training_args.json").read_text())
    assert args["vllm_importance_sampling_correction"] is False  # beam: no sampling to correct
    assert args["reward_weights"] == [1.0, 1.0, 1.0] and args["beta"] == 0.01
    model, _ = load_model(run, "grpo")  # TRL counts a completion ending elsewhere as cut
    assert RunDecoding.load(run).trie.end_token_id in model.generation_config.eos_token_id


def test_grpo_sample_mode_and_lora_reload_from_the_sft_export(run: Path) -> None:
    cfg = load_config(GRPOStageConfig, None, [*GRPO, "rollout.mode=sample", "finetune=lora"])
    folder = train_grpo(cfg, run)
    info = json.loads((folder / "model_info.json").read_text())
    assert info["finetune"] == "lora"
    assert info["base"] == {"kind": "stage", "stage": "sft", "key": RunLayout(run).key("sft")}
    model, tokenizer = load_model(run, "grpo")
    assert type(model).__name__.startswith("PeftModel")
    # The reference is the merged SFT model: the adapter disabled gives the SFT model's logits.
    sft = AutoModelForCausalLM.from_pretrained(run / "sft" / "model").eval()
    ids = torch.tensor([tokenizer("A user recently engaged with")["input_ids"]])
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        torch.testing.assert_close(model(ids).logits, sft(ids).logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, sft(ids).logits, atol=1e-4)


def test_dpo_step_changes_the_policy_and_keeps_the_reference_frozen(run: Path) -> None:
    cfg = load_config(DPOStageConfig, None, [*DPO, "loss=[sigmoid, sft]"])
    plan, built = _captured(dpo_plan(cfg, pretrained=False))
    folder = train_stage(plan, run)
    _assert_policy_moved_reference_frozen(run, "dpo", built[0].trainer)
    args = json.loads((folder / "training_args.json").read_text())
    assert args["loss_type"] == ["sigmoid", "sft"]
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    assert any("val_ndcg@10" in r for r in history)


def test_sdpo_with_one_negative_is_trls_sigmoid_loss(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run, other)
    # One batch of every pair: the two trainers' samplers order the rows differently.
    one = [
        *DPO,
        "negatives.per_prompt=1",
        "windows.samples=16",
        "training.per_device_train_batch_size=16",
        "training.optim=sgd",  # Adam would blow rounding noise of near-zero gradients up
        "validation.users=0",
    ]
    sdpo = train_dpo(load_config(DPOStageConfig, None, [*one, "loss=[sdpo]"]), run)
    sigmoid = train_dpo(load_config(DPOStageConfig, None, [*one, "loss=[sigmoid]"]), other)
    a, b = _weights(sdpo / "model"), _weights(sigmoid / "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    losses = [
        [
            r["loss"]
            for r in json.loads((f / "metrics.json").read_text())["log_history"]
            if "loss" in r
        ]
        for f in (sdpo, sigmoid)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


class _Crash(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [
        ("grpo", [*GRPO, "training.max_steps=4", "training.save_steps=2"]),
        # Two rounds of two steps: killed in round 2, after the round-1 checkpoint.
        ("dpo", [*DPO, "rounds=2", "training.max_steps=4", "training.save_steps=100"]),
    ],
)
def test_resume_after_a_kill_equals_an_uninterrupted_run(
    run: Path, tmp_path: Path, stage: str, overrides: list[str]
) -> None:
    cls, train = (GRPOStageConfig, train_grpo) if stage == "grpo" else (DPOStageConfig, train_dpo)
    cfg: Any = load_config(cls, None, [*overrides, "validation.users=0"])
    other = tmp_path / "uninterrupted"
    shutil.copytree(run, other)
    reference = train(cfg, other)
    with pytest.raises(RuntimeError, match="killed at step 3"):
        train(cfg, run, callbacks=[_Crash(3)])
    ckpt = next((run / f"{stage}.checkpoints").iterdir())
    if stage == "dpo":
        assert {p.name for p in (ckpt / "rounds").iterdir()} == {"round-0.json", "round-1.json"}
    folder = train(cfg, run)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-2" and metrics["global_step"] == 4
    resumed, expected = _weights(folder / "model"), _weights(reference / "model")
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_eval_puts_grpo_and_dpo_beside_sft_pop_and_sasrec(run: Path) -> None:
    from llmrec.eval.stage import EvalStageConfig, run_eval

    train_grpo(load_config(GRPOStageConfig, None, [*GRPO, "validation.users=0"]), run)
    train_dpo(load_config(DPOStageConfig, None, [*DPO, "validation.users=0"]), run)
    cfg = load_config(
        EvalStageConfig,
        None,
        [
            "models=[sft, grpo, dpo, pop, sasrec]",
            "protocol.bootstrap=0",
            "sasrec.max_epochs=2",
            "sasrec.hidden=16",
        ],
    )
    rows = run_eval(cfg, run)
    names = {r["model"].split(" ")[0] for r in rows}
    assert names == {"SFT", "GRPO", "DPO", "Pop", "SASRec"} and len(rows) == 10
    assert all(r["invalid@10"] == 0 for r in rows)
    assert "GRPO" in (run / "eval" / "table.txt").read_text()


def test_module_entry_points(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmrec.train import TRAINERS
    from llmrec.train.grpo import main

    assert {"sft", "grpo", "dpo"} <= set(TRAINERS)
    code = main(["--run", str(run), *GRPO, "training.max_steps=1", "validation.users=0"])
    assert code == 0 and "grpo" in capsys.readouterr().out
