"""Every GRPO and DPO recipe loads into its config and passes every check that needs no model
(TRL keys included); the GPU recipes keep the settings from the field they cite."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.config import ConfigError, load_config
from llmrec.train.align_config import DPOStageConfig, GRPOStageConfig
from llmrec.train.dpo import check_config as check_dpo
from llmrec.train.grpo import check_config as check_grpo

RECIPES = Path(__file__).parents[2] / "recipes"


def test_every_grpo_recipe_loads_and_checks() -> None:
    paths = {p.name: p for p in (RECIPES / "grpo").glob("*.yaml")}
    assert set(paths) >= {"tiny-cpu.yaml", "qwen2.5-0.5b-full.yaml", "qwen2.5-1.5b-lora.yaml"}
    for name, path in paths.items():
        cfg = load_config(GRPOStageConfig, path)
        check_grpo(cfg)
        trl = cfg.training.trl
        assert trl["num_generations"] == 16 and trl["beta"] == pytest.approx(1e-3), name
        if name.startswith("qwen"):  # MiniOneRec's RL settings
            assert cfg.rollout.mode == "beam" and set(cfg.rewards) == {"hit", "ranking"}, name
            lr = 1e-5 if cfg.finetune == "full" else 1e-4
            assert trl["learning_rate"] == pytest.approx(lr), name
            assert "accelerate launch --config_file recipes/accelerate/" in path.read_text()


def test_every_dpo_recipe_loads_and_checks() -> None:
    paths = {p.name: p for p in (RECIPES / "dpo").glob("*.yaml")}
    assert set(paths) >= {"tiny-cpu.yaml", "qwen2.5-0.5b-full.yaml", "qwen2.5-1.5b-lora.yaml"}
    for name, path in paths.items():
        cfg = load_config(DPOStageConfig, path)
        check_dpo(cfg)
        if name.startswith("qwen"):
            assert (RECIPES / "accelerate" / "multi_gpu_ddp.yaml").is_file()
            assert cfg.negatives.source == "beam" and cfg.rounds >= 1, name


def test_defaults_come_from_the_field_and_recipes_add_to_them() -> None:
    cfg = load_config(GRPOStageConfig, None, ["training.max_steps=5"])
    trl = cfg.training.trl
    assert (trl["num_generations"], trl["beta"], trl["learning_rate"]) == (16, 1e-3, 1e-5)
    assert trl["max_steps"] == 5 and trl["disable_dropout"] is True


@pytest.mark.parametrize(
    ("cls", "overrides", "message"),
    [
        (GRPOStageConfig, ["rewards={}"], "at least one reward"),
        (GRPOStageConfig, ["rewards={hits: 1.0}"], "unknown 'hits'"),
        (GRPOStageConfig, ["training.num_generations=1"], "at least 2"),
        (GRPOStageConfig, ["training.reward_weights=[1.0]"], "set by llmrec"),
        (DPOStageConfig, ["loss=[sdpo, ipo]"], "sdpo combines with sft only"),
        (DPOStageConfig, ["loss=[sigmoid]", "loss_weights=[1.0, 2.0]"], "one weight per loss"),
        (DPOStageConfig, ["rounds=3", "training.max_steps=10"], "multiple of the rounds"),
        (
            DPOStageConfig,
            ["loss=[sdpo]", "negatives.per_prompt=3", "training.per_device_train_batch_size=8"],
            "whole prompts",
        ),
        (DPOStageConfig, ["training.loss_type=[ipo]"], "set by llmrec"),
    ],
)
def test_invalid_configs_are_rejected(cls: type, overrides: list[str], message: str) -> None:
    check = check_grpo if cls is GRPOStageConfig else check_dpo
    with pytest.raises(ConfigError, match=message):
        check(load_config(cls, None, ["training.max_steps=4", *overrides]))
