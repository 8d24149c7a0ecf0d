"""Run-directory stages: atomic completion, skipping by config hash, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.io import StageDir, write_json_atomic, write_text_atomic


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a" / "x.json"
    write_json_atomic(path, {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    assert path.stat().st_mode & 0o777 != 0o600  # readable like a normal file


def test_stage_builds_once_per_config(tmp_path: Path) -> None:
    stage = StageDir(tmp_path, "data")
    calls: list[str] = []

    def fill(folder: Path) -> dict[str, str]:
        calls.append(folder.name)
        (folder / "out.txt").write_text(str(len(calls)))
        return {"extra": "yes"}

    assert stage.build("h1", fill) is True
    assert stage.build("h1", fill) is False  # same config: skipped
    assert stage.build("h2", fill) is True  # new config: redone
    assert stage.build("h2", fill, force=True) is True
    assert (stage.path / "out.txt").read_text() == "3"
    marker = json.loads(stage.marker.read_text())
    assert marker == {"stage": "data", "config_hash": "h2", "extra": "yes"}
    assert stage.is_done("h2") and not stage.is_done("h1")


def test_failed_stage_keeps_previous_and_leaves_no_debris(tmp_path: Path) -> None:
    stage = StageDir(tmp_path, "data")
    stage.build("h1", lambda f: (f / "out.txt").write_text("good") and None)

    def broken(folder: Path) -> None:
        (folder / "out.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stage.build("h2", broken)
    assert (stage.path / "out.txt").read_text() == "good" and stage.is_done("h1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_require_names_the_missing_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Run `llmrec data prepare` first"):
        StageDir(tmp_path, "data").require("llmrec data prepare")


def test_nested_stage_builds_and_replaces_atomically(tmp_path: Path) -> None:
    stage = StageDir(tmp_path, "baselines/sasrec")
    assert stage.build("h1", lambda d: (d / "a.txt").write_text("1") and None)
    assert stage.build("h2", lambda d: (d / "a.txt").write_text("2") and None)
    assert (tmp_path / "baselines" / "sasrec" / "a.txt").read_text() == "2"
    assert sorted(p.name for p in (tmp_path / "baselines").iterdir()) == ["sasrec"]
