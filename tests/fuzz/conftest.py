"""Fuzz-suite fixtures: the session's ``Tally`` and the hypothesis profile.

``pytest tests/fuzz`` prints the tally's counts at the end; ``LLMREC_FUZZ_REPORT=<path>`` also
writes them as JSON (``scripts/fuzz_report.py`` does both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.fuzz.tally import Tally

# Derandomized, so every run (and the counts it reports) is the same; no example database.
settings.register_profile(
    "llmrec-fuzz",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TALLY_KEY = pytest.StashKey[Tally]()


def pytest_configure(config: pytest.Config) -> None:
    """One tally per session."""
    config.stash[TALLY_KEY] = Tally()


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """The session's tally."""
    yield request.config.stash[TALLY_KEY]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the counts (and write them where LLMREC_FUZZ_REPORT says)."""
    tally = config.stash.get(TALLY_KEY, None)
    if tally is None or not tally.total:
        return
    data = tally.as_dict()
    terminalreporter.write_sep("-", "fuzz inputs")
    terminalreporter.write_line(
        f"{data['inputs']} inputs: {data['loaded']} loaded, {data['located']} errors named "
        f"file and line/row/field, {data['file_only']} named the file only, "
        f"{data['unlocated']} named neither, {data['traceback']} tracebacks"
    )
    out = os.environ.get("LLMREC_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
