"""What a step compiles to, and what a compiled step may tell the runner.

A compiled pipeline is a tuple of :class:`CompiledStep`: a plain function plus the two IDs the
MPL records. The function takes the exchange and the message's log and returns ``None`` to go
on (the common case, so the runner's loop stays tiny) or one of three outcomes that change the
way through the pipeline: :class:`Filtered`, :class:`Routed`, :class:`Split`. Outcomes that do
not depend on the message (a filter's note, a route's target) are built once, at compile time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeAlias

from flowrt.dsl.model import Flow, Pos
from flowrt.engine.exchange import Exchange
from flowrt.mpl.model import LogLevel

__all__ = [
    "CompileContext",
    "CompiledStep",
    "Filtered",
    "MessageLog",
    "Outcome",
    "Routed",
    "Split",
    "StepFunction",
]


class MessageLog(Protocol):
    """The part of a message's MPL entry that steps write to (an ``EntryHandle``)."""

    @property
    def level(self) -> LogLevel: ...

    def log(self, level: str, text: str) -> None: ...

    def custom_property(self, name: str, value: str) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Filtered:
    """The message (or branch) stops here; nothing is sent for it."""

    note: str


@dataclasses.dataclass(frozen=True, slots=True)
class Routed:
    """The router chose ``receivers`` (empty: no route matched, nothing is sent).

    ``line`` is the flow line of the route that decided, recorded as the model step ID.
    """

    receivers: tuple[str, ...]
    line: str
    note: str


@dataclasses.dataclass(frozen=True, slots=True)
class Split:
    """The rest of the pipeline runs once per branch (none: the message completes here)."""

    branches: tuple[Exchange, ...]
    note: str


Outcome: TypeAlias = Filtered | Routed | Split
StepFunction: TypeAlias = Callable[[Exchange, MessageLog], Outcome | None]


class CompiledStep(NamedTuple):
    """One step ready to run. A named tuple so the runner's loop can unpack it cheaply.

    ``step_id`` says what the step does (``set header X-Forwarded-By``); ``line`` is the flow
    line as text, the MPL's model step ID.
    """

    run: StepFunction
    step_id: str
    line: str


@dataclasses.dataclass(frozen=True)
class CompileContext:
    """What a step may need while it is compiled: the flow (for its source lines), the folder
    scripts are imported from first, and the structlog logger ``log`` steps write to."""

    flow: Flow
    folder: Path
    logger: Any

    def source_line(self, pos: Pos) -> str:
        """The flow line at ``pos`` without its indentation, for notes and errors."""
        lines = self.flow.source.splitlines()
        return lines[pos.line - 1].strip() if 0 < pos.line <= len(lines) else ""


def line_of(pos: Pos) -> str:
    """The MPL's model step ID: the flow line as text."""
    return str(pos.line)
