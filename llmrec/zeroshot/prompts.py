"""Zero-shot prompts: YAML files in ``prompts/`` holding one Jinja prompt each.

Each file is one prompt::

    name: next_item          # what configs call it
    mode: full               # full (the whole catalog) | candidates (rank a given list)
    free_text: false         # true: answers carry text after the title (endpoints only)
    description: ...
    system: ...              # optional system message
    prompt: "... {% for item in history -%} - {{ item.text }} {% endfor -%} ..."

Variables: ``history`` and ``candidates`` (lists of item mappings: ``name``, ``text``,
``title`` and the item's raw fields), ``k``, ``item_noun``, ``items_noun``. Rendering happens in
the shared Jinja sandbox (``llmrec.templating``): item fields are data, so a title such as
``{{ 7*7 }}`` is printed as it is, never evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from llmrec.templating import TemplateError, compile_template, render

Mode = Literal["full", "candidates"]
MODES = ("full", "candidates")


def prompts_dir() -> Path:
    """``prompts/`` of a source checkout, else the copy packaged inside llmrec."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "prompts", here.parent / "_prompts"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no prompts/ folder found beside llmrec or inside it")


@dataclass(frozen=True)
class ZeroShotPrompt:
    """One prompt, compiled."""

    name: str
    mode: Mode
    prompt: str
    system: str | None
    description: str
    free_text: bool
    source: str

    def render(
        self,
        history: Sequence[Mapping[str, Any]],
        k: int,
        candidates: Sequence[Mapping[str, Any]] = (),
        item_noun: str = "item",
        items_noun: str = "items",
    ) -> str:
        """The user message for a history (and candidate list), items passed as data."""
        fields = {
            "history": list(history),
            "candidates": list(candidates),
            "k": k,
            "item_noun": item_noun,
            "items_noun": items_noun,
        }
        return render(self.prompt, fields, self.source)


def load_prompt(path: str | Path) -> ZeroShotPrompt:
    """Load and compile one prompt file, failing with the file and the field at fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TemplateError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a mapping with name, mode, prompt")
    for key in ("name", "mode", "prompt"):
        if key not in data:
            raise TemplateError(f"{path}: missing field '{key}'")
    if data["mode"] not in MODES:
        raise TemplateError(f"{path}: field 'mode' must be one of {', '.join(MODES)}")
    unknown = set(data) - {"name", "mode", "prompt", "system", "description", "free_text"}
    if unknown:
        raise TemplateError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    compile_template(str(data["prompt"]), f"{path} prompt")
    system = data.get("system")
    return ZeroShotPrompt(
        name=str(data["name"]),
        mode=data["mode"],
        prompt=str(data["prompt"]),
        system=None if system is None else str(system),
        description=str(data.get("description", "")),
        free_text=bool(data.get("free_text", False)),
        source=str(path),
    )


def load_prompts(folder: str | Path | None = None) -> dict[str, ZeroShotPrompt]:
    """Every ``*.yaml`` prompt in a folder, by name (names must be unique)."""
    folder = Path(folder) if folder else prompts_dir()
    prompts: dict[str, ZeroShotPrompt] = {}
    for path in sorted(folder.glob("*.yaml")):
        prompt = load_prompt(path)
        if prompt.name in prompts:
            raise TemplateError(
                f"{path}: prompt '{prompt.name}' is also defined in {prompts[prompt.name].source}"
            )
        prompts[prompt.name] = prompt
    if not prompts:
        raise TemplateError(f"{folder}: no *.yaml prompts")
    return prompts
