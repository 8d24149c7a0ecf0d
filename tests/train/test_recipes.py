"""Every SFT recipe loads into SFTStageConfig and passes validation; every accelerate launcher
config loads with accelerate's own loader; config arithmetic and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.config import ConfigError, load_config
from llmrec.train.config import SFTStageConfig, accumulation_steps, validate
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
    assert tiny.finetune == "full" and tiny.training.trl["max_steps"] > 0


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


def test_global_batch_size_sets_accumulation(tmp_path: Path) -> None:
    assert accumulation_steps(1024, 16, 8) == 8 and accumulation_steps(1024, 16, 1) == 64
    with pytest.raises(ConfigError, match="not a multiple"):
        accumulation_steps(1024, 16, 3)
    batch = ["training.per_device_train_batch_size=16", "training.global_batch_size=1024"]
    cfg = load_config(SFTStageConfig, None, batch)
    assert sft_training_args(cfg, tmp_path).gradient_accumulation_steps == 64
    both = load_config(SFTStageConfig, None, [*batch, "training.gradient_accumulation_steps=2"])
    with pytest.raises(ConfigError, match="not both"):
        sft_training_args(both, tmp_path)
    plain = load_config(SFTStageConfig, None, ["training.gradient_accumulation_steps=4"])
    assert sft_training_args(plain, tmp_path).gradient_accumulation_steps == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune=qlora"], "qlora"),
        (["max_length=0"], "max_length"),
        (["max_history=0"], "max_history"),
        (["lora.r=0"], "lora.r"),
    ],
)
def test_invalid_configs_are_rejected(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(load_config(SFTStageConfig, None, overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.max_steps=-1", "training.num_train_epochs=0"], "max_steps"),
        (["training.epochs=3"], "did you mean"),  # close to num_train_epochs
        (["training.output_dir=/tmp/x"], "set by llmrec"),
        (["training.max_length=64"], "stage's max_length"),
    ],
)
def test_training_keys_are_checked_against_trl(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cfg = load_config(SFTStageConfig, None, overrides)
    with pytest.raises(ConfigError, match=message):
        sft_training_args(cfg, tmp_path)


def test_training_keys_pass_through_to_trl(tmp_path: Path) -> None:
    """Any SFTConfig field reaches TRL as it is: no llmrec code per option."""
    with pytest.raises(ConfigError, match="finetune"):
        load_config(SFTStageConfig, None, ["finetune=adapter"])
    cfg = load_config(
        SFTStageConfig,
        None,
        ["training.bf16=false", "training.report_to=[wandb]", "training.neftune_noise_alpha=5"],
    )
    assert cfg.training.bf16 is False and cfg.training.trl["report_to"] == ["wandb"]
    args = sft_training_args(cfg, tmp_path)
    assert args.neftune_noise_alpha == 5 and args.report_to == ["wandb"]
    assert args.learning_rate == 2e-4 and args.lr_scheduler_type == "cosine"  # llmrec defaults


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
