"""Errors of study files: each names the file, the line, the field, the bad value and the fix."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

_NO_VALUE = object()


def show_value(value: Any) -> str:
    """A compact one-line rendering of a user value (YAML-ish: strings unquoted when plain)."""
    if isinstance(value, str):
        return value if value and value.strip() == value and value[0] not in "[{'\"" else repr(value)
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


def did_you_mean(name: str, known: list[str]) -> str:
    """'; did you mean 'lr'?' when ``name`` is close to one of ``known``, else ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Issue:
    """One problem: where (file, line or flag), which field, the bad value, what is expected."""

    path: str
    message: str
    value: Any = _NO_VALUE
    line: int | None = None
    origin: str | None = None  # the command-line flag that set the value, e.g. "--set x=1"
    context: str | None = None  # e.g. 'in cell c01 "method.name=la"'

    def format(self, file: str | None) -> str:
        """``file:line: path = value: message (context)``."""
        where = file or "<study>"
        if self.line is not None:
            where += f":{self.line}"
        if self.origin:
            where += f": {self.origin}"
        what = self.path or ("the study" if self.value is not _NO_VALUE else "")
        if self.value is not _NO_VALUE:
            what += f" = {show_value(self.value)}"
        text = f"{where}: {what}: {self.message}" if what else f"{where}: {self.message}"
        return text + (f" ({self.context})" if self.context else "")


class PlatformInputError(ValueError):
    """Input the platform cannot use (a flag, a location, a resume conflict): the CLI exits 2."""


@dataclass
class SpecError(PlatformInputError):
    """An invalid study (or plan): one or more issues, printed one per line."""

    issues: list[Issue]
    file: str | None = None
    header: str = field(default="")

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [i.format(self.file) for i in self.issues]
        if self.header:
            lines.insert(0, self.header)
        return "\n".join(lines)


class EnvironmentFailure(RuntimeError):
    """The environment failed, not the input: Ray cannot start or be reached, a store is
    unreachable or stays locked. The CLI exits 3 with the message (no traceback)."""


__all__ = ["EnvironmentFailure", "Issue", "PlatformInputError", "SpecError", "did_you_mean", "show_value"]
