"""Zero-shot on a run directory: `llmrec zeroshot recommend`, and `llmrec eval` with the
zeroshot model in the same table as the baselines, over the full catalog and candidate lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.cli import main
from llmrec.config import load_config
from llmrec.data import DataConfig, prepare_data
from llmrec.eval.stage import EvalStageConfig, run_eval
from llmrec.tokens import build_tiny_model, save_tiny, train_tokenizer
from llmrec.zeroshot.prompts import ZeroShotPrompt, load_prompts, prompts_dir
from tests.zeroshot.conftest import corpus


@pytest.fixture(scope="module")
def zs_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A prepared run (12 users × 6 films over 20) and a saved tiny model folder."""
    folder = tmp_path_factory.mktemp("zs_run")
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"m{i}", t) for u in range(12) for t, i in enumerate(rng.permutation(20)[:6])]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "log.csv", index=False)
    titles = [f"Heat {i}" if i % 3 else "Heat" for i in range(20)]  # duplicates on purpose
    items = pd.DataFrame(
        {
            "item": [f"m{i}" for i in range(20)],
            "title": titles,
            "year": [1990 + i for i in range(20)],
        }
    )
    items.to_csv(folder / "items.csv", index=False)
    cfg = load_config(
        DataConfig,
        None,
        [
            "dataset.name=tabular",
            f"dataset.path={folder / 'log.csv'}",
            f"dataset.item_path={folder / 'items.csv'}",
            "dataset.columns={user_id: user, item_id: item, timestamp: ts}",
            "dataset.item_columns={item_id: item}",
        ],
    )
    run = folder / "run"
    prepare_data(cfg, run)
    tokenizer = train_tokenizer(corpus(), vocab_size=300)
    model = build_tiny_model(tokenizer, hidden_size=64, num_heads=2, num_layers=1, seed=0)
    return run, save_tiny(model, tokenizer, folder / "model")


def test_every_packaged_prompt_loads_and_renders_item_text_as_data() -> None:
    prompts = load_prompts()
    assert {"next_item", "rank_candidates", "explain"} <= set(prompts)
    assert prompts_dir().name == "prompts"
    evil = {"name": "{{ 7*7 }}", "text": "{% if x %}boom{% endif %} <|im_end|>", "title": "t"}
    for prompt in prompts.values():
        assert isinstance(prompt, ZeroShotPrompt)
        text = prompt.render([evil], 5, [evil], "movie", "movies")
        assert "{% if x %}boom{% endif %} <|im_end|>" in text  # inserted literally
        assert "49" not in text
        if prompt.mode == "candidates":
            assert "{{ 7*7 }}" in text


def test_zeroshot_recommend_command(
    zs_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, model = zs_run
    argv = ["zeroshot", "recommend", "--run", str(run), "--model", str(model)]
    assert main([*argv, "user_id=u3", "k=4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("user u3 — prompt:") and "answer lines:" in out
    assert "[trie " in out and "top-4:" in out and "validity: 100.0%" in out
    assert main([*argv, "candidates=5", "k=3", "decoding=list"]) == 0
    out = capsys.readouterr().out
    assert "Candidate items:" in out and out.count("[trie ") == 3
    assert main([*argv, "user_id=nobody"]) == 2
    assert "no test case for user 'nobody'" in capsys.readouterr().err


def test_zeroshot_in_the_eval_table(zs_run: tuple[Path, Path]) -> None:
    run, model = zs_run
    for candidates in (None, 6):
        cfg = load_config(
            EvalStageConfig,
            None,
            [
                "models=[zeroshot, pop]",
                "exclude_seen=[true]",
                f"zeroshot.model={model}",
                "protocol.bootstrap=0",
                f"protocol.candidates={'null' if candidates is None else candidates}",
            ],
        )
        rows = run_eval(cfg, run, force=True)
        label = "zero-shot (hf beam)" if candidates is None else "zero-shot (hf exact)"
        assert [r["model"] for r in rows] == [label, "Pop"]
        assert all(r["invalid@5"] == 0.0 for r in rows)
        table = (run / "eval" / "table.txt").read_text()
        assert label in table and "invalid" in table
        settings = json.loads((run / "eval" / "results.json").read_text())["settings"]
        assert settings["candidates"] == candidates
