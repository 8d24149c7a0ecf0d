"""The SFT stage end to end on a synthetic run: artifacts, skip/force, the periodic validation
hook, crash + resume equal to an uninterrupted run, export to one plain HF checkpoint, the
``python -m llmrec.train.sft`` entry point, and the shape of the re-rendered datasets."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from llmrec.errors import UserError
from llmrec.io import StageDir
from llmrec.recommend.loading import load_model
from llmrec.train.config import SFTStageConfig
from llmrec.train.data import load_sft_datasets
from llmrec.train.export import export_model
from llmrec.train.sft import main, train_sft
from llmrec.train.stage import latest_checkpoint

PROMPTS = ["A user recently engaged with", "Give the ID of this item: Film number 3"]


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    model.eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.float()


def test_full_finetuning_writes_a_loadable_stage(
    run: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = train_sft(make_cfg("train_samples=32"), run)
    assert folder == run / "sft" and StageDir(run, "sft").is_done()
    assert {p.name for p in folder.iterdir()} >= {
        "model",
        "sid_map.json",
        "config.yaml",
        "model_info.json",
        "metrics.json",
        "_DONE.json",
    }
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["world_size"] == 1
    assert metrics["ranks"] == [{"rank": 0, "steps": 4}]
    assert metrics["first_loss"] > metrics["last_loss"]
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert "<a_0>" in tokenizer.get_vocab()
    # Checkpoints are gone after a finished run (training.keep_checkpoints=false).
    assert not (run / "sft.checkpoints").exists()
    # Same config: skipped. Another config: retrained.
    mtime = (folder / "_DONE.json").stat().st_mtime_ns
    assert train_sft(make_cfg("train_samples=32"), run) == folder
    assert (folder / "_DONE.json").stat().st_mtime_ns == mtime
    train_sft(make_cfg("train_samples=32", "training.max_steps=2"), run)
    assert json.loads((folder / "metrics.json").read_text())["global_step"] == 2


def test_periodic_validation_calls_the_injected_function(
    run: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_eval(model: Any, tokenizer: Any) -> dict[str, float]:
        calls.append({"training": model.training, "grad": torch.is_grad_enabled()})
        return {"recall@10": 0.1 * len(calls), "val_ndcg@10": 0.5}

    cfg = make_cfg(
        "train_samples=32", "training.max_steps=5", "training.eval_steps=2", "validation_size=8"
    )
    folder = train_sft(cfg, run, eval_fn=fake_eval)
    assert len(calls) == 3  # steps 2, 4 and the last one (5)
    assert all(c == {"training": False, "grad": False} for c in calls)
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    logged = [(row["step"], row["val_recall@10"]) for row in history if "val_recall@10" in row]
    assert logged == [(2, pytest.approx(0.1)), (4, pytest.approx(0.2)), (5, pytest.approx(0.3))]
    assert all(row["val_ndcg@10"] == 0.5 for row in history if "val_recall@10" in row)
    assert any("eval_loss" in row for row in history)  # validation loss on the same schedule


class _Crash(TrainerCallback):
    """Kill the run at a given step, like a lost machine."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def test_resume_after_a_crash_matches_an_uninterrupted_run(
    run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    cfg = make_cfg("train_samples=48", "training.max_steps=6", "training.save_steps=2")
    other = tmp_path / "uninterrupted"
    shutil.copytree(run, other)
    reference = train_sft(cfg, other)

    with pytest.raises(RuntimeError, match="killed at step 3"):
        train_sft(cfg, run, callbacks=[_Crash(3)])
    assert not StageDir(run, "sft").is_done()  # a crash never leaves a finished-looking stage
    checkpoints = next((run / "sft.checkpoints").iterdir())
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    assert (checkpoints / "log.jsonl").read_text().count('"loss"') == 2  # steps 1, 2

    folder = train_sft(cfg, run)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-2" and metrics["global_step"] == 6
    resumed = load_file(folder / "model" / "model.safetensors")
    expected = load_file(reference / "model" / "model.safetensors")
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_an_incomplete_checkpoint_is_not_resumed_from(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert latest_checkpoint(tmp_path / "checkpoint-4") is None


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_lora_export_merges_into_a_plain_checkpoint(
    tied: bool, run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_cfg(
        "finetune=lora", "lora.r=4", "train_samples=32", f"tiny_tie_embeddings={str(tied).lower()}"
    )
    folder = train_sft(cfg, run)
    assert (folder / "model" / "adapter_config.json").is_file()
    assert (folder / "base_model" / "model.safetensors").is_file()
    peft_model, tokenizer = load_model(run, "sft")
    expected = _logits(peft_model, tokenizer)

    out = export_model(run, "sft", tmp_path / "export")
    assert {"model.safetensors", "config.json", "sid_map.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    from llmrec.serve.server import resolve_run

    assert resolve_run(None, out) == run.resolve()  # `llmrec serve --model EXPORT` finds its run
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in k or "token_adapter" in k or "base_layer" in k for k in weights)
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert exported.config.tie_word_embeddings == tied
    torch.testing.assert_close(
        _logits(exported, AutoTokenizer.from_pretrained(out)), expected, rtol=1e-4, atol=1e-4
    )
    # The SID rows really moved away from the base: the merge carried them over.
    base = AutoModelForCausalLM.from_pretrained(folder / "base_model")
    info = json.loads((folder / "model_info.json").read_text())
    ids = torch.tensor(info["sid_token_ids"])
    rows = exported.get_output_embeddings().weight[ids]
    assert not torch.allclose(rows, base.get_output_embeddings().weight[ids])


def test_serving_a_model_folder_without_its_run_is_a_clear_error(tmp_path: Path) -> None:
    from llmrec.serve.server import resolve_run

    assert resolve_run("runs/x", tmp_path) == Path("runs/x")
    with pytest.raises(UserError, match="--run RUN"):
        resolve_run(None, None)
    with pytest.raises(UserError, match="Give --run RUN"):
        resolve_run(None, tmp_path / "model")


def test_full_export_is_a_copy_or_a_cast(
    run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train_sft(make_cfg("train_samples=16", "training.max_steps=1"), run)
    model, tokenizer = load_model(run, "sft")
    expected = _logits(model, tokenizer)
    out = export_model(run)
    assert out == run / "export" / "sft"
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out), tokenizer), expected
    )
    half = export_model(run, "sft", tmp_path / "bf16", dtype="bfloat16")
    cast = AutoModelForCausalLM.from_pretrained(half)
    assert cast.dtype == torch.bfloat16
    assert AutoTokenizer.from_pretrained(half).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(UserError, match="dtype"):
        export_model(run, "sft", tmp_path / "bad", dtype="int3")
    with pytest.raises(UserError, match="llmrec train sft"):
        export_model(tmp_path / "nothing")


def test_module_entry_point(
    run: Path, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m llmrec.train.sft`` (what accelerate launch / torchrun start), in-process."""
    assert main(["--run", str(run), *tiny_overrides, "train_samples=16"]) == 0
    out = capsys.readouterr().out
    assert "sft: full training of tiny: 4 steps on 1 process(es)" in out and "training loss" in out
    assert main(["--run", str(run), "training.max_steps=0", "training.num_train_epochs=0"]) == 2
    assert "set training.max_steps" in capsys.readouterr().err
    assert main(["--run", str(run), "training.learning_rat=0.1"]) == 2
    assert "did you mean learning_rate" in capsys.readouterr().err


def test_max_history_rerenders_the_same_examples(
    synthetic_run: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    full, full_val = load_sft_datasets(make_cfg("validation_size=1000"), synthetic_run)
    short, short_val = load_sft_datasets(
        make_cfg("max_history=2", "validation_size=1000"), synthetic_run
    )
    assert len(short) == len(full) and len(short_val) == len(full_val)
    assert short["completion"] == full["completion"]
    changed = sum(a != b for a, b in zip(short["prompt"], full["prompt"], strict=True))
    assert changed > 0
    # A history of at most two SIDs: at most six SID tokens in a seqrec prompt.
    for row in short_val:
        assert row["prompt"][-1]["content"].count("<a_") <= 2
    sub, _ = load_sft_datasets(make_cfg("train_samples=10"), synthetic_run)
    assert len(sub) == 10 and sub.column_names == ["prompt", "completion"]


def test_lora_on_a_pretrained_folder_reloads_it_by_path(
    run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    """A HF model folder (no SID tokens) as the base: resized for the SIDs, not copied into the
    stage, reloaded from its path for export."""
    from transformers import AutoModelForCausalLM

    from llmrec.config import load_config
    from llmrec.instruct.build import InstructConfig, build_instruct
    from llmrec.tokens import build_tiny_model, save_tiny, train_tokenizer

    corpus = [f"Film number {i} is a film about things {i % 7}" for i in range(300)]
    tokenizer = train_tokenizer(corpus, vocab_size=500)
    base_dir = save_tiny(
        build_tiny_model(tokenizer, hidden_size=64, num_heads=2, num_layers=1),
        tokenizer,
        tmp_path / "pretrained",
    )
    build_instruct(load_config(InstructConfig, None, [f"tokenizer={base_dir}"]), run, force=True)
    cfg = make_cfg(f"model={base_dir}", "finetune=lora", "lora.r=4", "train_samples=32")
    folder = train_sft(cfg, run)
    assert not (folder / "base_model").exists()
    info = json.loads((folder / "model_info.json").read_text())
    assert info["model"] == str(base_dir) and info["vocab_rows"] == len(tokenizer) + 24
    peft_model, tok = load_model(run, "sft")
    expected = _logits(peft_model, tok)
    out = export_model(run, "sft", tmp_path / "export")
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out), tok), expected, rtol=1e-4, atol=1e-4
    )


def test_a_pretrained_model_needs_its_own_tokenizer_in_the_instruct_stage(
    run: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    from llmrec.config import ConfigError

    with pytest.raises(ConfigError, match="rebuild it with the model's tokenizer"):
        train_sft(make_cfg("model=Qwen/Qwen2.5-0.5B-Instruct", "finetune=lora"), run)


def test_packing_trains_on_cpu(run: Path, make_cfg: Callable[..., SFTStageConfig]) -> None:
    folder = train_sft(make_cfg("packing=true", "train_samples=48"), run)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["last_loss"] < metrics["first_loss"]


def test_a_stale_export_is_an_error_naming_the_command(
    run: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    """Serving and vLLM evaluation read ``<run>/export/sft``: once SFT is retrained, an export of
    the earlier model is refused with the command that refreshes it, never served silently."""
    from llmrec.recommend.loading import servable_dir

    train_sft(make_cfg("finetune=lora", "lora.r=4", "train_samples=32"), run, force=True)
    with pytest.raises(UserError, match=r"llmrec export --run .* --stage sft"):
        servable_dir(run, "sft")  # not exported yet
    export_model(run, "sft")
    assert servable_dir(run, "sft") == run / "export" / "sft"
    train_sft(make_cfg("finetune=lora", "lora.r=8", "train_samples=32"), run)  # a new SFT model
    with pytest.raises(UserError, match=r"exported from an earlier sft model.*again"):
        servable_dir(run, "sft")
    export_model(run, "sft", force=True)
    assert servable_dir(run, "sft") == run / "export" / "sft"
