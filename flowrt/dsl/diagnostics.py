"""Problems found in a flow file, and how they are shown to a person."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from flowrt.dsl.model import Pos

__all__ = ["Diagnostic", "Severity", "has_errors", "render", "render_all"]

Severity = Literal["error", "warning"]


@dataclasses.dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem: where, how bad, a stable code, and what is wrong in words."""

    file: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str

    @classmethod
    def at(cls, pos: Pos, code: str, message: str, severity: Severity = "error") -> Diagnostic:
        return cls(pos.file, pos.line, pos.column, severity, code, message)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def render(diag: Diagnostic, source: str | None) -> str:
    """``file:line:column: error: message``, then the line and a caret under the spot."""
    head = f"{diag.file}:{diag.line}:{diag.column}: {diag.severity}: {diag.message} [{diag.code}]"
    if source is None:
        return head
    lines = source.splitlines()
    if not 1 <= diag.line <= len(lines):
        return head
    text = lines[diag.line - 1].expandtabs(4)
    raw = lines[diag.line - 1]
    # keep the caret under the spot when the line has tabs before it
    caret_col = len(raw[: diag.column - 1].expandtabs(4))
    return f"{head}\n    {text}\n    {' ' * caret_col}^"


def render_all(diags: Iterable[Diagnostic], sources: dict[str, str]) -> str:
    return "\n".join(render(d, sources.get(d.file)) for d in diags)


def has_errors(diags: Sequence[Diagnostic]) -> bool:
    return any(d.is_error for d in diags)
