"""The mail adapter's model: what ``sender mail`` and ``receiver mail`` blocks build.

The DSL core knows these only as blocks (see :class:`flowrt.dsl.model.SenderBlock`); the
specs in :mod:`flowrt.adapters.mail.spec` build them, and the adapter's factories use them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Literal, TypeAlias

from flowrt.dsl.model import Pos, Template


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
class PollCron:
    expression: str  # five fields, checked when the flow was read
    tz: str | None = None
    kind: Literal["cron"] = "cron"


@dataclasses.dataclass(frozen=True)
class PollIdle:
    kind: Literal["idle"] = "idle"


Poll: TypeAlias = PollEvery | PollDaily | PollCron | PollIdle


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
    claim: bool = True  # IMAP: claim each mail on the server (CONDSTORE) before handing it over
    # IMAP: how long the connection stays open between polls; None: log out after each poll
    keep_connection: dt.timedelta | None = dt.timedelta(minutes=25)
    in_flight: int = 8  # mails handed over at once; 1: one after another, in mailbox order
    # IMAP: processes working the folder together, each the mails whose UID % workers is its
    # own (the runtime starts them; see flowrt/runtime/workers.py)
    workers: int = 1

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
    html: Template | None = None  # None: the mail's HTML alternative (see mime/content.py)
    attach_original: bool = False
    chunking: bool = True  # BDAT when the server offers CHUNKING (smtp/transaction.py)

    def describe(self) -> str:
        return f"{self.adapter} smtp {self.name} {self.connection.address}"
