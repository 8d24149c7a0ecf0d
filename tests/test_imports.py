"""The package's imports flow one way (DESIGN.md's picture): no module imports a stage to its
right, ``constrain`` imports nothing of ours, and there are no cycles between modules.

Read with ``ast`` from the source, function-level imports included, so the rule holds for the
lazy imports the package uses to keep the CLI fast too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmrec"

# What each subpackage may NOT import (of ours). eval.metrics is pure: anyone may use it.
FORBIDDEN = {
    "constrain": {
        "config",
        "errors",
        "templating",
        "run",
        "io",
        "data",
        "indexing",
        "tokens",
        "instruct",
        "train",
        "recommend",
        "eval",
        "serve",
        "zeroshot",
        "cli",
        "quickstart",
    },
    "data": {
        "indexing",
        "tokens",
        "instruct",
        "train",
        "recommend",
        "eval",
        "serve",
        "zeroshot",
        "cli",
        "quickstart",
    },
    "indexing": {
        "tokens",
        "instruct",
        "train",
        "recommend",
        "eval",
        "serve",
        "zeroshot",
        "cli",
        "quickstart",
    },
    "tokens": {"instruct", "train", "recommend", "eval", "serve", "zeroshot", "cli", "quickstart"},
    "instruct": {"train", "recommend", "eval", "serve", "zeroshot", "cli", "quickstart"},
    "recommend": {"train", "eval", "serve", "cli", "quickstart"},
    "zeroshot": {"train", "eval", "serve", "cli", "quickstart"},
    "train": {"eval", "serve", "cli", "quickstart"},
    "eval": {"train", "serve", "cli", "quickstart"},
    "serve": {"train", "eval", "cli", "quickstart"},
}
PURE = {"llmrec.eval.metrics"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``llmrec`` module ``path`` imports, at any depth of the file."""
    found = set()
    package = _module(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llmrec")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.startswith("llmrec"):
                found.add(base)
                # `from llmrec.train import sft` names a module too.
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in files} - {name} for name, path in files.items()
    }


def test_no_module_imports_a_stage_to_its_right() -> None:
    against = []
    for module, targets in _graph().items():
        parts = module.split(".")
        here = parts[1] if len(parts) > 1 else ""
        for target in targets - PURE:
            there = target.split(".")[1] if len(target.split(".")) > 1 else ""
            if there in FORBIDDEN.get(here, set()):
                against.append(f"{module} imports {target}")
    assert not against, "imports against the data flow:\n" + "\n".join(sorted(against))


def test_no_import_cycles() -> None:
    graph = {m: {t for t in ts if not t.endswith("__init__")} for m, ts in _graph().items()}
    # Package __init__ modules re-export lazily; a cycle through them is not a real cycle.
    graph = {m: ts for m, ts in graph.items() if m.count(".") > 1 or m == "llmrec.cli"}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt in graph and nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", ["constrain/trie.py", "constrain/dense.py", "constrain/hf.py"])
def test_constrain_imports_nothing_of_ours_but_itself(name: str) -> None:
    outside = {m for m in _imports(PACKAGE / name) if not m.startswith("llmrec.constrain")}
    assert not outside, f"{name} imports {outside}"
