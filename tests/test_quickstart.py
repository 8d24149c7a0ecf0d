"""The quickstart: every stage from ML-100K to a top-10 with titles; a rerun skips them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.config import ConfigError
from llmrec.quickstart import load_plan, recipes_dir, run_quickstart

# A few steps of everything: the real settings live in recipes/quickstart.yaml.
FAST = [
    "sft.train_samples=256",
    "sft.validation_size=32",
    "sft.training.max_steps=4",
    "sft.training.save_steps=4",
    "sft.training.eval_steps=4",
    "sft.training.logging_steps=2",
    "eval.sasrec.max_epochs=1",
    "eval.protocol.max_users=20",
    "eval.protocol.bootstrap=20",
]


def test_plan_reads_each_stage_from_the_recipe() -> None:
    plan = load_plan(overrides=["sft.training.max_steps=7", "instruct.max_history=5"])
    assert (recipes_dir() / "quickstart.yaml").exists()
    assert plan["sft"].training.trl["max_steps"] == 7 and plan["instruct"].max_history == 5
    assert plan["instruct"].tasks == {"seqrec_lm": 1.0} and not plan["sft"].completion_only_loss
    assert plan["eval"].models == ["llm", "pop", "sasrec"]
    with pytest.raises(ConfigError, match="<stage>"):
        load_plan(overrides=["max_steps=3"])
    with pytest.raises(ConfigError, match="training"):
        load_plan(overrides=["sft.training.no_such_key=3"])


@pytest.mark.slow
def test_quickstart_end_to_end_then_skips(tmp_path: Path) -> None:
    said: list[str] = []
    rows = run_quickstart(tmp_path / "run", overrides=FAST, say=said.append)
    text = "\n".join(said)
    assert [(r["model"], r["exclude_seen"]) for r in rows] == [
        (m, e) for m in ("LLM (exact)", "Pop", "SASRec") for e in (False, True)
    ]
    assert all(r["invalid@10"] == 0 for r in rows if r["model"].startswith("LLM"))
    assert "NDCG@10" in text and (tmp_path / "run" / "eval" / "plot.png").exists()
    top = text.split("[6/6]")[1]
    assert top.count("\n  ") >= 11 and "held-out next item:" in top  # 10 titled lines + target
    markers = sorted((tmp_path / "run").glob("**/_DONE.json"))
    assert {m.parent.name for m in markers} >= {"data", "sids", "instruct", "sft", "eval", "sasrec"}
    stamps = [m.stat().st_mtime_ns for m in markers]
    assert run_quickstart(tmp_path / "run", overrides=FAST, say=lambda _: None) == rows
    assert [m.stat().st_mtime_ns for m in markers] == stamps  # nothing rebuilt
