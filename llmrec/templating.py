"""One Jinja sandbox for every template llmrec renders (item texts, instructions, prompts).

Item fields are passed in as *data*: a title such as ``{{ 7*7 }}`` or ``{% if %}`` is inserted
literally, never evaluated, because only the template source is compiled. The sandbox also stops
templates from reaching Python internals, so a shared template file cannot run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A template does not compile or names a field the data lacks."""


@lru_cache(maxsize=1)
def sandbox() -> ImmutableSandboxedEnvironment:
    """The shared sandboxed environment (no autoescape: outputs are plain text, not HTML)."""
    env = ImmutableSandboxedEnvironment(
        autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False
    )
    env.filters["listjoin"] = _listjoin
    return env


def _listjoin(value: Any, sep: str = ", ") -> str:
    """Join a list-like value, passing strings through (fields may be either)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return sep.join(str(v) for v in value)


@lru_cache(maxsize=256)
def compile_template(source: str, name: str = "<template>") -> Any:
    """Compile template text once; syntax errors name the template and line."""
    try:
        return sandbox().from_string(source)
    except TemplateSyntaxError as err:
        raise TemplateError(f"{name}:{err.lineno}: {err.message}") from None


def render(source: str, fields: Mapping[str, Any], name: str = "<template>") -> str:
    """Render a template with ``fields`` as variables; missing fields are an error."""
    try:
        return str(compile_template(source, name).render(**fields)).strip()
    except TemplateError:
        raise
    except Exception as err:  # jinja raises many types; say which template failed
        raise TemplateError(f"{name}: {type(err).__name__}: {err}") from None
