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
    ``message.id``, ``flow.name``, ``date:now:%Y-%m-%d``, ``attachment.name``."""

    kind: RefKind
    name: str
    pos: Pos

    def __str__(self) -> str:
        if self.kind == "body":
            return "body"
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


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Address:
    host: str
    port: int
    explicit_port: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Proxy:
    """``internet`` (location is None) or ``on-premise location "ID"``."""

    type: Literal["internet", "on-premise"]
    location: Template | None = None


@dataclasses.dataclass(frozen=True)
class Auth:
    method: Literal["none", "plain", "encrypted", "oauth2"]
    credential: str | None = None
    # oauth2 only: the mailbox to log in as (a client-credentials grant names none)
    user: str | None = None


Protection = Literal["off", "starttls-mandatory", "starttls-optional", "smtps", "imaps", "pop3s"]


@dataclasses.dataclass(frozen=True)
class PollEvery:
    interval: dt.timedelta
    kind: Literal["every"] = "every"


@dataclasses.dataclass(frozen=True)
class PollDaily:
    at: dt.time
    tz: str | None = None
    kind: Literal["daily"] = "daily"


@dataclasses.dataclass(frozen=True)
class PollIdle:
    kind: Literal["idle"] = "idle"


Poll: TypeAlias = PollEvery | PollDaily | PollIdle


@dataclasses.dataclass(frozen=True)
class PostProcess:
    action: Literal["mark-read", "delete", "archive", "keep"]
    folder: str | None = None
    mark_read: bool = False  # archive "F" mark-read


@dataclasses.dataclass(frozen=True)
class AttachSpec:
    """``attach NAME type MIME from header|property NAME`` in a receiver."""

    name: Template
    content_type: str
    source: Literal["header", "property"]
    source_name: str
    pos: Pos


@dataclasses.dataclass(frozen=True)
class SmimeSpec:
    """``sign alias "A" [algorithm X]`` or ``encrypt alias "A"[, "B"] [algorithm X]``."""

    aliases: tuple[str, ...]
    algorithm: str


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    retries: int
    interval: dt.timedelta
    backoff: float = 1.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return self.interval.total_seconds() * (self.backoff ** (attempt - 1))


@dataclasses.dataclass(frozen=True)
class Connection:
    """What sender and receiver share: where and how to connect."""

    address: Address
    proxy: Proxy
    protection: Protection
    auth: Auth
    timeout: dt.timedelta
    allow_plaintext_auth: bool


@dataclasses.dataclass(frozen=True)
class Sender:
    adapter: str  # "mail"
    protocol: Literal["imap", "pop3"]
    connection: Connection
    folder: str
    selection: Literal["unread", "all"]
    max_messages: int
    post_process: PostProcess
    poll: Poll
    attachments: Literal["keep", "drop"]
    headers: tuple[str, ...] | None  # None: all headers
    keep_original: bool
    pos: Pos
    positions: Mapping[str, Pos]

    def describe(self) -> str:
        where = f"{self.connection.address}"
        folder = f"/{self.folder}" if self.protocol == "imap" else ""
        return f"{self.adapter} {self.protocol} {where}{folder}"


@dataclasses.dataclass(frozen=True)
class Receiver:
    adapter: str  # "mail"
    name: str
    connection: Connection
    from_: Template
    to: tuple[Template, ...]
    cc: tuple[Template, ...]
    bcc: tuple[Template, ...]
    subject: Template | None
    body: Template | None
    body_type: str
    charset: str
    transfer_encoding: str
    attachments_from_message: bool
    attach: tuple[AttachSpec, ...]
    sign: SmimeSpec | None
    encrypt: SmimeSpec | None
    pos: Pos
    positions: Mapping[str, Pos]

    def describe(self) -> str:
        return f"{self.adapter} smtp {self.name} {self.connection.address}"


class MplLogLevel(enum.Enum):
    NONE = "none"
    INFO = "info"
    DEBUG = "debug"
    TRACE = "trace"


@dataclasses.dataclass(frozen=True)
class Flow:
    name: str
    description: str
    log_level: MplLogLevel
    sender: Sender | None
    steps: tuple[Step, ...]
    receivers: tuple[Receiver, ...]
    on_error: RetryPolicy | None
    pos: Pos
    source: str  # the flow file's text, kept so that deploy stores exactly what was validated

    @property
    def file(self) -> str:
        return self.pos.file

    def receiver(self, name: str) -> Receiver:
        for r in self.receivers:
            if r.name == name:
                return r
        raise KeyError(name)
