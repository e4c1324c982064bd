"""What a message-processing log (MPL) holds: frozen values read back from the store.

The recorder (:mod:`flowrt.mpl.recorder`) writes plain tuples for speed; the store
(:mod:`flowrt.mpl.store`) turns rows into these classes, and ``to_dict()`` gives the stable
JSON form that ``flowrt mpl ... --format json`` prints (fixed key order, ISO UTC times).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flowrt.errors import ChainLevel
from flowrt.mpl._time import iso

__all__ = [
    "CONTENT_LIMIT",
    "ErrorInfo",
    "LogLevel",
    "LogLine",
    "MplEntry",
    "MplStatus",
    "MplSummary",
    "Run",
    "Step",
    "StepContent",
    "StepStatus",
]

CONTENT_LIMIT = 64 * 1024
"""Bytes of message content (headers + body, UTF-8) kept per step at ``trace``."""


class MplStatus(enum.StrEnum):
    """Status of an MPL entry, and of each run (attempt) within it."""

    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    RETRY = "RETRY"
    ESCALATED = "ESCALATED"
    FAILED = "FAILED"
    DISCARDED = "DISCARDED"
    ABANDONED = "ABANDONED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        """Final statuses end the entry (set its log end); PROCESSING and RETRY do not."""
        return self not in (MplStatus.PROCESSING, MplStatus.RETRY)


class StepStatus(enum.StrEnum):
    """Outcome of one pipeline step within a run."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    FILTERED = "FILTERED"  # a `filter` step that dropped the message
    SKIPPED = "SKIPPED"  # e.g. a `route` branch that was not taken


class LogLevel(enum.StrEnum):
    """How much an entry records. Each level includes everything of the levels before it.

    ``none``: a minimal entry only (ids, flow, sender/receivers, status, times, custom header
    properties, error information, filter note), so that a failure is never invisible.
    ``info``: also runs and steps, and ``log`` lines at info and above.
    ``debug``: also ``log`` lines at debug.  ``trace``: also the message content per step.
    """

    NONE = "none"
    INFO = "info"
    DEBUG = "debug"
    TRACE = "trace"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {LogLevel.NONE: 0, LogLevel.INFO: 1, LogLevel.DEBUG: 2, LogLevel.TRACE: 3}


def _ms(start: datetime | None, stop: datetime | None) -> float | None:
    if start is None or stop is None:
        return None
    return round((stop - start).total_seconds() * 1000.0, 3)


@dataclasses.dataclass(frozen=True)
class StepContent:
    """The message as a step left it (``trace`` only), capped at :data:`CONTENT_LIMIT`.

    ``size`` is the original size in bytes; ``truncated`` says the body was cut to fit.
    """

    headers: tuple[tuple[str, str], ...]
    body: str
    truncated: bool
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "headers": [list(pair) for pair in self.headers],
            "body": self.body,
            "truncated": self.truncated,
            "size": self.size,
        }


@dataclasses.dataclass(frozen=True)
class Step:
    """One executed pipeline step.

    ``model_step_id`` is the flow's DSL line number as text, so an operator can find the step
    in the flow file; ``branch`` names a split branch (``attachment-2``) and is empty otherwise.
    """

    step_id: str
    model_step_id: str
    branch: str
    status: StepStatus
    start: datetime
    stop: datetime
    error: str | None = None
    content: StepContent | None = None

    @property
    def duration_ms(self) -> float | None:
        return _ms(self.start, self.stop)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "model_step_id": self.model_step_id,
            "branch": self.branch,
            "status": self.status.value,
            "start": iso(self.start),
            "stop": iso(self.stop),
            "duration_ms": self.duration_ms,
            "error": self.error,
            "content": None if self.content is None else self.content.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class Run:
    """One attempt at processing the message; a retry makes another run."""

    number: int
    start: datetime
    stop: datetime | None
    status: MplStatus
    steps: tuple[Step, ...] = ()

    @property
    def duration_ms(self) -> float | None:
        return _ms(self.start, self.stop)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "start": iso(self.start),
            "stop": iso(self.stop),
            "status": self.status.value,
            "duration_ms": self.duration_ms,
            "steps": [step.to_dict() for step in self.steps],
        }


@dataclasses.dataclass(frozen=True)
class LogLine:
    """A line written by a ``log`` step; ``level`` is the step's level (``info``, ``debug``...)."""

    time: datetime
    level: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"time": iso(self.time), "level": self.level, "text": self.text}


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """The last error of an entry: the chain as ``render_chain`` prints it, its levels as
    data, the hint (kept beside the chain, never inside it) and the last failed step."""

    chain: str
    levels: tuple[ChainLevel, ...]
    hint: str | None
    failed_step: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "levels": [level.to_dict() for level in self.levels],
            "hint": self.hint,
            "failed_step": self.failed_step,
        }


@dataclasses.dataclass(frozen=True)
class MplSummary:
    """The columns of ``flowrt mpl list``: what the list query reads, nothing more."""

    message_id: str
    correlation_id: str
    application_id: str | None
    flow: str
    flow_version: str
    status: MplStatus
    log_start: datetime
    log_end: datetime | None
    simulation: bool
    failed_step: str | None
    subject: str = ""
    mail_from: str = ""
    node: str = ""

    @property
    def duration_ms(self) -> float | None:
        return _ms(self.log_start, self.log_end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "application_id": self.application_id,
            "flow": self.flow,
            "flow_version": self.flow_version,
            "status": self.status.value,
            "log_start": iso(self.log_start),
            "log_end": iso(self.log_end),
            "duration_ms": self.duration_ms,
            "simulation": self.simulation,
            "failed_step": self.failed_step,
            "subject": self.subject,
            "from": self.mail_from,
            "node": self.node or None,
        }


@dataclasses.dataclass(frozen=True)
class MplEntry:
    """Everything recorded for one message.

    ``custom_properties`` maps a name to its values in the order they were set (a name may be
    set more than once). ``filter_note`` is set when a ``filter`` step dropped the message.
    """

    message_id: str
    correlation_id: str
    application_id: str | None
    flow: str
    flow_version: str
    sender: str
    receivers: tuple[str, ...]
    status: MplStatus
    log_start: datetime
    log_end: datetime | None
    log_level: LogLevel
    simulation: bool = False
    custom_properties: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=dict, hash=False
    )
    error: ErrorInfo | None = None
    filter_note: str | None = None
    runs: tuple[Run, ...] = ()
    log: tuple[LogLine, ...] = ()
    subject: str = ""
    mail_from: str = ""
    node: str = ""  # the runtime node that processed it (several nodes on one store)

    @property
    def duration_ms(self) -> float | None:
        return _ms(self.log_start, self.log_end)

    def summary(self) -> MplSummary:
        return MplSummary(
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            application_id=self.application_id,
            flow=self.flow,
            flow_version=self.flow_version,
            status=self.status,
            log_start=self.log_start,
            log_end=self.log_end,
            simulation=self.simulation,
            failed_step=None if self.error is None else self.error.failed_step,
            subject=self.subject,
            mail_from=self.mail_from,
            node=self.node,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "application_id": self.application_id,
            "flow": self.flow,
            "flow_version": self.flow_version,
            "sender": self.sender,
            "receivers": list(self.receivers),
            "status": self.status.value,
            "log_start": iso(self.log_start),
            "log_end": iso(self.log_end),
            "duration_ms": self.duration_ms,
            "log_level": self.log_level.value,
            "simulation": self.simulation,
            "filter_note": self.filter_note,
            "custom_properties": {k: list(v) for k, v in self.custom_properties.items()},
            "error": None if self.error is None else self.error.to_dict(),
            "runs": [run.to_dict() for run in self.runs],
            "log": [line.to_dict() for line in self.log],
            "subject": self.subject,
            "from": self.mail_from,
            "node": self.node or None,
        }
