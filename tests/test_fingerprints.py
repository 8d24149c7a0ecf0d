"""A run is a function of its inputs: a changed input file reruns exactly the stages downstream
of it, an unchanged one (even touched) reruns nothing, and a skipped stage says so."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from llmrec.cli import main
from llmrec.config import load_config
from llmrec.data import DataConfig, prepare_data
from llmrec.eval.sasrec import SASRecConfig
from llmrec.eval.stage import sasrec_for_run
from llmrec.indexing.build import IndexConfig, build_index
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.instruct.build import InstructConfig, build_instruct
from llmrec.run import RunLayout

STAGES = ("data", "sids", "instruct", "baselines/sasrec")


def _write(folder: Path, users: int, items: int) -> None:
    rows = [(f"u{u}", f"i{(u * 3 + t) % items}", t) for u in range(users) for t in range(6)]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "log.csv", index=False)
    titles = [f"Film {i}" for i in range(items)]
    pd.DataFrame({"item": [f"i{i}" for i in range(items)], "title": titles}).to_csv(
        folder / "items.csv", index=False
    )


def _pipeline(folder: Path, max_history: int = 20) -> dict[str, int]:
    """Run every stage; returns each stage marker's modification time."""
    run = folder / "run"
    data_cfg = load_config(
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
    prepared = prepare_data(data_cfg, run)
    build_index(load_config(IndexConfig, None, ["method=random", "quantizer.codebook_size=8"]), run)
    instruct = ["tiny_vocab_size=400", f"max_history={max_history}"]
    build_instruct(load_config(InstructConfig, None, instruct), run)
    sasrec_for_run(run, prepared, SASRecConfig(hidden=16, max_epochs=1, max_len=5))
    layout = RunLayout(run)
    return {s: layout.stage(s).marker.stat().st_mtime_ns for s in STAGES}


@pytest.mark.slow
def test_changed_inputs_rerun_exactly_the_stages_downstream(tmp_path: Path) -> None:
    _write(tmp_path, users=12, items=20)
    first = _pipeline(tmp_path)
    assert _pipeline(tmp_path) == first  # nothing changed: every stage skipped

    # Touched but unchanged: the content hash decides, not the modification time.
    os.utime(tmp_path / "log.csv")
    assert _pipeline(tmp_path) == first

    # New items and interactions appended: every stage that reads them is rebuilt.
    _write(tmp_path, users=14, items=24)
    second = _pipeline(tmp_path)
    rebuilt = sorted(s for s in STAGES if second[s] != first[s])
    assert rebuilt == sorted(STAGES)
    sid_map = SemanticIdMap.load(tmp_path / "run" / "sids" / "sid_map.json")
    assert {"i20", "i21", "i22", "i23"} <= set(sid_map.item_ids)

    # Only the item file changes (a title): data and everything after it, nothing else runs.
    items = pd.read_csv(tmp_path / "items.csv")
    items.loc[0, "title"] = "Film zero"
    items.to_csv(tmp_path / "items.csv", index=False)
    third = _pipeline(tmp_path)
    assert all(third[s] != second[s] for s in STAGES)

    # A setting of one stage: that stage alone (nothing upstream, SASRec does not read it).
    fourth = _pipeline(tmp_path, max_history=3)
    assert [s for s in STAGES if fourth[s] != third[s]] == ["instruct"]


def test_a_skipped_stage_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, users=8, items=12)
    argv = [
        "data",
        "prepare",
        "--run",
        str(tmp_path / "run"),
        "--dataset",
        "tabular",
        "--path",
        str(tmp_path / "log.csv"),
        f"dataset.item_path={tmp_path / 'items.csv'}",
        "dataset.columns={user_id: user, item_id: item, timestamp: ts}",
        "dataset.item_columns={item_id: item}",
    ]
    assert main(argv) == 0
    assert "wrote " in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "wrote " not in out
    _write(tmp_path, users=9, items=12)  # one more user: the input changed
    assert main(argv) == 0
    assert "wrote " in capsys.readouterr().out
