"""One Jinja sandbox for every template llmrec renders (item texts, instructions, prompts).

Item fields are passed in as *data*: a title such as ``{{ 7*7 }}`` or ``{% if %}`` is inserted
literally, never evaluated, because only the template source is compiled. The sandbox also stops
templates from reaching Python internals, so a shared template file cannot run code.

Data is inert for the tokenizer as well: ``inert_text`` breaks every string in catalog text that
a tokenizer would cut out as one added token (``<|im_end|>``, ``</s>``, a SID such as
``<a_1><b_2><c_3>``), so an item's title can neither close a chat turn nor name another item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmrec.errors import UserError

# U+2060 WORD JOINER: invisible, no line break, and kept by the NFC/NFKC normalizers tokenizers
# use, so the text reads the same while the exact token string no longer occurs in it.
JOINER = "\u2060"

# Token-like strings: `<...>` with no space inside (ChatML `<|im_end|>`, `</s>`, `<s>`, Gemma's
# `<start_of_turn>`, DeepSeek's `<｜...｜>`, SID tokens `<a_12>`, ...), and `[UPPER]` markers
# (`[CLS]`, `[INST]`, `[/INST]`). Also any `<|` at all, and a `<` ending the text, which a
# neighbouring template fragment could complete. A joiner already in place is not doubled.
_TOKEN_LIKE = re.compile(
    r"<(?!\u2060)(?=[^\s<>]{1,256}>|\||$)|\[(?!\u2060)(?=/?[A-Z][A-Z_]{1,31}\])"
)


def inert_text(
    text: str, reserved: Iterable[str] = (), pattern: re.Pattern[str] | None = None
) -> str:
    """``text`` with a word joiner (U+2060) put into every string that could be an added token.

    A joiner goes after the opening ``<`` or ``[`` of each token-like string (see
    ``_TOKEN_LIKE``), after the first character of each match of ``pattern`` (e.g. the SID
    tokens of a custom ``token_format``) and of each ``reserved`` string (a tokenizer's
    special tokens that look like none of these). The text reads the same, but no tokenizer
    finds the exact token string in it any more. Text without such strings comes back
    unchanged, and applying it again changes nothing.
    """
    out = _TOKEN_LIKE.sub(lambda m: m.group(0) + JOINER, text)
    if pattern is not None:
        out = pattern.sub(lambda m: _break(m.group(0)), out)
    for token in reserved:
        if len(token) > 1 and token in out:
            out = out.replace(token, _break(token))
    return out


def _break(token: str) -> str:
    return token[0] + JOINER + token[1:] if len(token) > 1 else token


def inert_value(value: Any, pattern: re.Pattern[str] | None = None) -> Any:
    """``inert_text`` applied to a field value: strings, and strings inside lists."""
    if isinstance(value, str):
        return inert_text(value, pattern=pattern)
    if isinstance(value, list | tuple):
        return [inert_value(v, pattern) for v in value]
    return value


class TemplateError(UserError):
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
