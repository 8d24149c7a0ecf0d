"""Fixture files for the data layer live in tests/data/fixtures/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures(tmp_path: Path) -> Path:
    """A private copy of the fixture folder that a test may corrupt."""
    dest = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, dest)
    return dest
