"""Instruction templates: YAML files in ``data_templates/`` holding Jinja prompt/response pairs.

Each file is one task::

    task: seqrec            # the task's name, used in configs and the dataset's `task` column
    kind: sequence          # sequence | item | review: which examples the task is built from
    description: ...
    paraphrases:            # one is drawn per example (seeded); evaluation uses the first
      - prompt: "... {{ history_sids | join(', ') }} ..."
        response: "{{ target_sid }}"

Templates are compiled once in the shared Jinja sandbox; item fields are inserted as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from llmrec.templating import TemplateError, compile_template, render

TaskKind = Literal["sequence", "item", "review"]
KINDS = ("sequence", "item", "review")


@dataclass(frozen=True)
class Paraphrase:
    """One prompt/response pair of Jinja source."""

    prompt: str
    response: str


@dataclass(frozen=True)
class TaskTemplate:
    """A task and its paraphrases, loaded from one YAML file."""

    task: str
    kind: TaskKind
    description: str
    paraphrases: tuple[Paraphrase, ...]
    source: str

    def render(self, index: int, variables: dict[str, Any]) -> tuple[str, str]:
        """Render paraphrase ``index`` into (prompt, response)."""
        p = self.paraphrases[index]
        where = f"{self.source} paraphrase {index + 1}"
        return (
            render(p.prompt, variables, f"{where} prompt"),
            render(p.response, variables, f"{where} response"),
        )


def default_templates_dir() -> Path:
    """``data_templates/`` of a source checkout, else the copy packaged inside llmrec."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "data_templates", here.parent / "_data_templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no data_templates/ folder found; set templates_dir")


def load_template(path: str | Path) -> TaskTemplate:
    """Load and compile one task file, failing with the file and the field at fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TemplateError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a mapping with task, kind, paraphrases")
    for key in ("task", "kind", "paraphrases"):
        if key not in data:
            raise TemplateError(f"{path}: missing field '{key}'")
    if data["kind"] not in KINDS:
        raise TemplateError(f"{path}: field 'kind' must be one of {', '.join(KINDS)}")
    raw = data["paraphrases"]
    if not isinstance(raw, list) or not raw:
        raise TemplateError(f"{path}: field 'paraphrases' must be a non-empty list")
    paraphrases = []
    for i, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or not {"prompt", "response"} <= set(item):
            raise TemplateError(f"{path}: paraphrase {i} needs 'prompt' and 'response'")
        for part in ("prompt", "response"):
            compile_template(str(item[part]), f"{path} paraphrase {i} {part}")
        paraphrases.append(Paraphrase(str(item["prompt"]), str(item["response"])))
    return TaskTemplate(
        str(data["task"]),
        data["kind"],
        str(data.get("description", "")),
        tuple(paraphrases),
        str(path),
    )


def load_templates(folder: str | Path | None = None) -> dict[str, TaskTemplate]:
    """Every ``*.yaml`` task in a folder, by task name (names must be unique)."""
    folder = Path(folder) if folder else default_templates_dir()
    templates: dict[str, TaskTemplate] = {}
    for path in sorted(folder.glob("*.yaml")):
        template = load_template(path)
        if template.task in templates:
            raise TemplateError(
                f"{path}: task '{template.task}' is also defined in "
                f"{templates[template.task].source}"
            )
        templates[template.task] = template
    if not templates:
        raise TemplateError(f"{folder}: no *.yaml templates")
    return templates
