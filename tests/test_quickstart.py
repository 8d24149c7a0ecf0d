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
    assert plan["threads"] == 1 and load_plan(overrides=["threads=2"])["threads"] == 2
    assert load_plan(overrides=["threads=null"])["threads"] is None
    with pytest.raises(ConfigError, match="threads"):
        load_plan(overrides=["threads=0"])


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, str]:
    """One quickstart run with a few steps of everything: (run folder, rows, what it said)."""
    said: list[str] = []
    run = tmp_path_factory.mktemp("quickstart") / "run"
    rows = run_quickstart(run, overrides=FAST, say=said.append)
    return run, rows, "\n".join(said)


@pytest.mark.slow
def test_quickstart_end_to_end_then_skips(quick: tuple[Path, list, str]) -> None:
    run, rows, text = quick
    tmp_path = run.parent
    assert [(r["model"], r["exclude_seen"]) for r in rows] == [
        (m, e) for m in ("LLM (exact)", "Pop", "SASRec") for e in (False, True)
    ]
    assert all(r["invalid@10"] == 0 for r in rows if r["model"].startswith("LLM"))
    assert "NDCG@10" in text and (tmp_path / "run" / "eval" / "plot.png").exists()
    top = text.split("[6/6]")[1]
    assert top.count("\n  ") >= 11 and "held-out test item:" in top  # 10 titled lines + target
    assert "llmrec serve --run" in text  # the next steps are printed
    markers = sorted((tmp_path / "run").glob("**/_DONE.json"))
    assert {m.parent.name for m in markers} >= {"data", "sids", "instruct", "sft", "eval", "sasrec"}
    stamps = [m.stat().st_mtime_ns for m in markers]
    assert run_quickstart(tmp_path / "run", overrides=FAST, say=lambda _: None) == rows
    assert [m.stat().st_mtime_ns for m in markers] == stamps  # nothing rebuilt


@pytest.mark.slow
def test_after_the_quickstart_recommend_serve_and_curl_agree(
    quick: tuple[Path, list, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's path after the quickstart: `llmrec recommend` for a test user, `llmrec
    serve` (HF backend) and a request for the same user give the same items."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from llmrec.cli import main
    from llmrec.data.prepare import PreparedData
    from llmrec.serve.server import ServeConfig, build_app

    run = quick[0]
    user = str(PreparedData.load(run).split.cases("test")["user_id"].iloc[0])
    capsys.readouterr()
    assert main(["recommend", "--run", str(run), "--user", user, "-k", "5"]) == 0
    printed = capsys.readouterr().out
    assert f"user {user} (history rule all" in printed and "held-out test item" in printed
    with TestClient(build_app(ServeConfig(backend="hf"), run)) as client:
        answer = client.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
    titles = [item["title"] for item in answer["items"]]
    assert len(titles) == 5 and answer["backend"] == "hf"
    for rank, title in enumerate(titles, start=1):
        assert f"{rank:>2}. {title}  (" in printed  # same items, same order
    # The evaluation's rule hides the held-out item from the history, as the quickstart shows.
    assert main(["recommend", "--run", str(run), "--user", user, "--history-rule", "test"]) == 0
    assert "(not seen)" in capsys.readouterr().out


def test_missing_run_and_missing_extra_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from llmrec.cli import main

    missing = tmp_path / "nothing"
    assert main(["eval", "--run", str(missing)]) == 2
    assert "llmrec data prepare" in capsys.readouterr().err
    assert not missing.exists()  # nothing left behind
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    assert main(["serve", "--run", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'llmrec[serve]'" in err
