"""The `llmrec` command: help everywhere, a data stage end to end, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmrec.cli import main

FIXTURES = Path(__file__).parent / "data" / "fixtures"


@pytest.mark.parametrize(
    "argv", [[], ["data"], ["data", "prepare"], ["data", "stats"], ["quickstart"]]
)
def test_every_command_explains_itself(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: llmrec" in out
    if argv == ["data", "prepare"]:
        assert "filters.min_user_interactions" in out and "k-core" in out


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmrec.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "data" in result.stdout


def test_prepare_then_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    argv = [
        "data",
        "prepare",
        "--run",
        str(run),
        "--dataset",
        "ml-100k",
        "--path",
        str(FIXTURES / "ml-100k"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "users                    3" in out and "interactions             9" in out
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["users"] == 3 and stats["split"]["method"] == "leave_one_out"
    first_marker = (run / "data" / "_DONE.json").read_text()
    assert main(argv) == 0  # second run is skipped: the marker is untouched
    assert (run / "data" / "_DONE.json").read_text() == first_marker
    assert main([*argv, "split.method=temporal"]) == 0
    assert json.loads((run / "data" / "stats.json").read_text())["split"]["method"] == "temporal"
    capsys.readouterr()
    assert main(["data", "stats", "--run", str(run)]) == 0
    assert "split temporal" in capsys.readouterr().out


def test_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "u"
    bad.mkdir()
    (bad / "u.data").write_text("1\t10\t4\tnoon\n")
    (bad / "u.item").write_text((FIXTURES / "ml-100k" / "u.item").read_text())
    assert main(["data", "prepare", "--run", str(tmp_path / "r"), "--path", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "u.data:1: field 'timestamp' is not a number: 'noon'" in err
    assert not (tmp_path / "r" / "data").exists()  # nothing half-written
    assert main(["data", "prepare", "--run", str(tmp_path / "r"), "split.method=random"]) == 2
    assert "split.method" in capsys.readouterr().err
    assert main(["data", "stats", "--run", str(tmp_path / "nothing")]) == 2
