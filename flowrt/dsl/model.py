"""The typed, frozen model of a flow. Everything a later layer needs is parsed here, once.

Every node that a user may have to be pointed at carries a :class:`Pos`. Settings blocks keep
``positions`` (setting name -> where it was written) so that a later check (deploy: "credential
'smtp-out' does not exist") can name the flow line.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Mapping
from typing import Literal, Protocol, TypeAlias


@dataclasses.dataclass(frozen=True, order=True)
class Pos:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# ----------------------------------------------------------------------------- expressions

RefKind = Literal["header", "property", "body", "message", "flow", "date", "attachment"]


@dataclasses.dataclass(frozen=True)
class Ref:
    """A reference to part of the exchange: ``header.Subject``, ``property.x``, ``body``,
    ``body.html``, ``message.id``, ``flow.name``, ``date:now:%Y-%m-%d``, ``attachment.name``."""

    kind: RefKind
    name: str
    pos: Pos

    def __str__(self) -> str:
        if self.kind == "body":
            return f"body.{self.name}" if self.name else "body"
        if self.kind == "date":
            return f"date:now:{self.name}"
        return f"{self.kind}.{self.name}"


@dataclasses.dataclass(frozen=True)
class Template:
    """A string with ``${...}`` expressions: literal text and references, in order."""

    parts: tuple[str | Ref, ...]
    source: str
    pos: Pos

    @property
    def is_literal(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    @property
    def literal(self) -> str:
        """The text of a template without expressions (or the joined literal parts)."""
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))


Operand: TypeAlias = Ref | Template


@dataclasses.dataclass(frozen=True)
class Compare:
    op: Literal["=", "!=", "contains"]
    left: Operand
    right: Operand
    pos: Pos


@dataclasses.dataclass(frozen=True)
class Matches:
    operand: Operand
    pattern: re.Pattern[str]
    pos: Pos


@dataclasses.dataclass(frozen=True)
class Exists:
    operand: Operand
    pos: Pos


@dataclasses.dataclass(frozen=True)
class Not:
    inner: Condition
    pos: Pos


@dataclasses.dataclass(frozen=True)
class And:
    items: tuple[Condition, ...]
    pos: Pos


@dataclasses.dataclass(frozen=True)
class Or:
    items: tuple[Condition, ...]
    pos: Pos


Condition: TypeAlias = Compare | Matches | Exists | Not | And | Or


# ----------------------------------------------------------------------------- steps


@dataclasses.dataclass(frozen=True)
class Target:
    """What a ``set`` or ``remove`` step changes."""

    kind: Literal["header", "property", "body"]
    name: str  # empty for body


class Step(Protocol):
    """A pipeline step. Each step's model lives in its module under
    :mod:`flowrt.engine.steps` (``SetStep`` in ``steps/set.py`` ...); this is what the DSL
    needs of any of them."""

    @property
    def pos(self) -> Pos: ...

    @property
    def kind(self) -> str: ...


# ----------------------------------------------------------------------------- blocks


class Block(Protocol):
    """What the DSL core and the runtime need of an adapter's block (``sender mail {...}``);
    the adapter's own model class has the rest."""

    @property
    def adapter(self) -> str: ...
    @property
    def pos(self) -> Pos: ...
    @property
    def positions(self) -> Mapping[str, Pos]: ...
    def describe(self) -> str: ...


class SenderBlock(Block, Protocol):
    """A built ``sender ADAPTER { ... }`` block."""


class ReceiverBlock(Block, Protocol):
    """A built ``receiver ADAPTER NAME { ... }`` block."""

    @property
    def name(self) -> str: ...


MAX_WAIT_SECONDS = 3650 * 86400.0  # a wait longer than the longest duration a flow may say

DEFAULT_MAX_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """Where a message ends after its last attempt: ``default`` (IMAP: keyword
    ``$flowrt-dead`` on the mail, which stays; POP3: kept), ``folder`` (IMAP: moved to
    ``target``), ``receiver`` (handed to the flow's receiver ``target``), ``keep``, ``delete``."""

    kind: str = "default"
    target: str = ""

    def describe(self) -> str:
        return f"{self.kind} {self.target!r}" if self.target else self.kind


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``on-error``: ``retries`` within one hand-over, waiting ``delay(n)``; across polls a
    mail is handed over at most ``max_attempts`` times (the same backoff between them), then
    goes to ``dead_letter``. ``permanent_errors`` ``dead-letter`` sends a mail whose error
    cannot heal (5xx, wrong password, unreadable) there at once."""

    retries: int
    interval: dt.timedelta
    backoff: float = 1.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    dead_letter: DeadLetter = DeadLetter()
    permanent_errors: str = "retry"

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        try:
            seconds = self.interval.total_seconds() * (self.backoff ** (attempt - 1))
        except OverflowError:  # many retries with a large factor
            seconds = MAX_WAIT_SECONDS
        return min(seconds, MAX_WAIT_SECONDS)


DEFAULT_POLICY = RetryPolicy(0, dt.timedelta(0))
"""What a flow without ``on-error`` gets across polls: five hand-overs, then the default
dead-letter place."""


class MplLogLevel(enum.Enum):
    NONE = "none"
    INFO = "info"
    DEBUG = "debug"
    TRACE = "trace"


@dataclasses.dataclass(frozen=True)
class ParamUse:
    """One place a flow uses a parameter (``${param.NAME}``, ``param.NAME:default``)."""

    name: str
    default: str | None
    pos: Pos


@dataclasses.dataclass(frozen=True)
class Flow:
    name: str
    description: str
    log_level: MplLogLevel
    sender: SenderBlock | None
    steps: tuple[Step, ...]
    receivers: tuple[ReceiverBlock, ...]
    on_error: RetryPolicy | None
    pos: Pos
    source: str  # the flow file's text, kept so that deploy stores exactly what was validated
    params: tuple[ParamUse, ...] = ()  # every use of a parameter, in file order

    @property
    def file(self) -> str:
        return self.pos.file

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(use.name for use in self.params))

    def receiver(self, name: str) -> ReceiverBlock:
        for r in self.receivers:
            if r.name == name:
                return r
        raise KeyError(name)
