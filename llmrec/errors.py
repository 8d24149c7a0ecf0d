"""The one error type for user mistakes.

A ``UserError`` is something the user can fix (a malformed file, a bad setting, a missing stage):
the command line prints it as one line naming the file, line or field, and exits with status 2.
Anything else is a bug and keeps its full traceback. ``ConfigError`` (settings) and
``DataError`` (input files) are its two common kinds.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input, located by file, line and field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        """``message`` says what is wrong and, where useful, what to do about it."""
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "")
        if self.field is not None:
            where = f"{where}: field {self.field!r}" if where else f"{self.field}"
        return f"{where}: {self.message}" if where else self.message


class MissingExtraError(UserError):
    """An optional dependency is missing: names the extra that installs it."""

    def __init__(self, module: str, extra: str, what: str) -> None:
        """``module`` could not be imported; ``pip install 'llmrec[extra]'`` brings it."""
        super().__init__(
            f"{what} needs the {module!r} package: pip install 'llmrec[{extra}]'"
            + (" (in its own environment: see the README)" if extra.startswith("vllm") else "")
        )
        self.module = module
        self.extra = extra


class MissingStageError(UserError, FileNotFoundError):
    """A stage the command reads has not been run (or did not finish) in this run directory."""
