"""The fuzz suite's tally: every input tried, and how it ended.

An input either loads (and the stage it built is complete) or fails with a ``UserError``; the
tally counts which errors named their file with a line, row or field, which named only the
file (problems of a whole file: not gzip, empty, ...), and tracebacks (any other exception,
which also fails the test).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmrec.errors import UserError

T = TypeVar("T")

OUTCOMES = ("loaded", "located", "file_only", "unlocated", "traceback")


@dataclass
class Tally:
    """Outcome counts, overall and per group (e.g. loader / mutation)."""

    total: Counter[str] = field(default_factory=Counter)
    groups: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, group: str, outcome: str, message: str = "") -> None:
        """Count one input of ``group`` that ended as ``outcome``."""
        self.total[outcome] += 1
        self.groups.setdefault(group, Counter())[outcome] += 1
        if message and f"{group}/{outcome}" not in self.examples:
            self.examples[f"{group}/{outcome}"] = message[:300]

    def run(self, group: str, attempt: Callable[[], T]) -> T | UserError:
        """Run ``attempt``: its result, or the ``UserError`` it raised (counted either way).

        Any other exception is counted as a traceback and raised again, failing the test.
        """
        try:
            result = attempt()
        except UserError as err:
            self.add(group, classify(err), str(err))
            return err
        except Exception as err:
            self.add(group, "traceback", f"{type(err).__name__}: {err}")
            raise
        self.add(group, "loaded")
        return result

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report."""
        return {
            "inputs": sum(self.total.values()),
            **{k: self.total[k] for k in OUTCOMES},
            "groups": {g: dict(c) for g, c in sorted(self.groups.items())},
            "examples": dict(sorted(self.examples.items())),
        }


def classify(err: UserError) -> str:
    """``located`` (file and line/row/field, or a config field), ``file_only`` or ``unlocated``."""
    if err.located:
        return "located"
    return "file_only" if err.file is not None else "unlocated"
