"""Every SFT recipe loads into SFTStageConfig and passes validation; every accelerate launcher
config loads with accelerate's own loader; config arithmetic and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.config import ConfigError, load_config
from llmrec.train.config import SFTStageConfig, TrainingSection, accumulation_steps, validate
from llmrec.train.sft import sft_training_args

RECIPES = Path(__file__).parents[2] / "recipes"


def test_every_sft_recipe_loads_and_validates() -> None:
    paths = sorted((RECIPES / "sft").glob("*.yaml"))
    assert {p.name for p in paths} >= {
        "tiny-cpu.yaml",
        "qwen2.5-0.5b-lora.yaml",
        "qwen2.5-1.5b-lora.yaml",
        "qwen2.5-0.5b-full.yaml",
        "qwen2.5-1.5b-full.yaml",
    }
    for path in paths:
        cfg = load_config(SFTStageConfig, path)
        validate(cfg)
        if cfg.model != "tiny":
            assert cfg.model.startswith("Qwen/Qwen2.5-"), path
            assert cfg.training.global_batch_size == 1024 and cfg.max_length == 512, path
    tiny = load_config(SFTStageConfig, RECIPES / "sft" / "tiny-cpu.yaml")
    assert tiny.finetune == "full" and tiny.training.max_steps > 0


def test_every_accelerate_config_loads() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    paths = {p.stem: p for p in (RECIPES / "accelerate").glob("*.yaml")}
    assert set(paths) >= {
        "single_gpu",
        "multi_gpu_ddp",
        "fsdp",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "cpu_ddp",
    }
    configs = {name: load_config_from_file(str(path)) for name, path in paths.items()}
    for name, cfg in configs.items():
        # Precision comes from the llmrec config, never from the launcher.
        assert cfg.mixed_precision == "no", name
    # On CPU, MULTI_CPU (or --cpu) starts one process: two need MULTI_GPU with use_cpu.
    cpu = configs["cpu_ddp"]
    assert str(cpu.distributed_type) == "DistributedType.MULTI_GPU"
    assert cpu.use_cpu and cpu.num_processes == 2
    assert configs["deepspeed_zero3"].deepspeed_config["zero_stage"] == 3
    assert configs["fsdp"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_global_batch_size_sets_accumulation() -> None:
    t = TrainingSection(per_device_train_batch_size=16, global_batch_size=1024)
    assert accumulation_steps(t, 8) == 8 and accumulation_steps(t, 1) == 64
    with pytest.raises(ConfigError, match="not a multiple"):
        accumulation_steps(t, 3)
    assert accumulation_steps(TrainingSection(gradient_accumulation_steps=4), 8) == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune=qlora"], "qlora"),
        (["max_length=0"], "max_length"),
        (["max_history=0"], "max_history"),
        (["training.max_steps=-1", "training.num_train_epochs=0"], "max_steps"),
        (["training.save_steps=0"], "save_steps"),
        (["lora.r=0"], "lora.r"),
    ],
)
def test_invalid_configs_are_rejected(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(load_config(SFTStageConfig, None, overrides))


def test_unknown_keys_and_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SFTStageConfig, None, ["training.epochs=3"])
    with pytest.raises(ConfigError, match="finetune"):
        load_config(SFTStageConfig, None, ["finetune=adapter"])
    cfg = load_config(SFTStageConfig, None, ["training.bf16=false", "training.report_to=[wandb]"])
    assert cfg.training.bf16 is False and cfg.training.report_to == ["wandb"]


def test_cpu_defaults_in_the_trainer_args(tmp_path: Path) -> None:
    """TRL defaults bf16 and gradient checkpointing to True; on CPU both must be off."""
    import torch

    args = sft_training_args(SFTStageConfig(), tmp_path, "x")
    assert args.completion_only_loss is True
    lm_style = load_config(SFTStageConfig, None, ["completion_only_loss=false"])
    assert sft_training_args(lm_style, tmp_path, "x").completion_only_loss is False
    if not torch.cuda.is_available():
        assert args.bf16 is False and args.gradient_checkpointing is False and args.use_cpu


def test_every_field_has_help() -> None:
    from llmrec.config import iter_help

    rows = list(iter_help(SFTStageConfig))
    assert {"model", "finetune", "lora.new_tokens", "training.eval_steps"} <= {
        k for k, _, _ in rows
    }
    assert all(text for _, _, text in rows)


def test_importing_the_package_stays_cheap() -> None:
    """The CLI builds its help from the config classes: no TRL/PEFT import for that."""
    import subprocess
    import sys

    code = (
        "import sys, llmrec.train, llmrec.train.sft, llmrec.train.export; "
        "print(sorted(m for m in ('trl', 'peft', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
