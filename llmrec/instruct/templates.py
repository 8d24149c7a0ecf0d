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

from llmrec.errors import UserError
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
    raise UserError("is needed: no data_templates/ folder was found", field="templates_dir")


def load_template(path: str | Path) -> TaskTemplate:
    """Load and compile one task file, failing with the file and the field at fault."""
    path = Path(path)
    file = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise TemplateError(f"not valid YAML: {err}", file=file, line=line) from None
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"cannot be read: {err}", file=file) from None
    if not isinstance(data, dict):
        raise TemplateError("expected a mapping with task, kind, paraphrases", file=file)
    for key in ("task", "kind", "paraphrases"):
        if key not in data:
            raise TemplateError("is missing", file=file, field=key)
    if data["kind"] not in KINDS:
        raise TemplateError(f"must be one of {', '.join(KINDS)}", file=file, field="kind")
    raw = data["paraphrases"]
    if not isinstance(raw, list) or not raw:
        raise TemplateError("must be a non-empty list", file=file, field="paraphrases")
    paraphrases = []
    for i, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or not {"prompt", "response"} <= set(item):
            raise TemplateError(f"paraphrase {i} needs 'prompt' and 'response'", file=file)
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
                f"'{template.task}' is also defined in {templates[template.task].source}",
                file=str(path),
                field="task",
            )
        templates[template.task] = template
    if not templates:
        raise TemplateError(f"holds no *.yaml templates: {folder}", field="templates_dir")
    return templates
