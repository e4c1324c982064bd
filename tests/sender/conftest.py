"""Fixtures for the mail sender tests: sender settings, endpoints, a state DB, mails, and a
recording ``handle``. The servers come from tests/conftest.py (real Dovecot, Dante)."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import itertools
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from flowrt.adapters.mail.model import (
    Address,
    Auth,
    Connection,
    Poll,
    PollEvery,
    PostProcess,
    Proxy,
    Sender,
)
from flowrt.adapters.mail.sender.endpoint import MailEndpoint, MailLogin
from flowrt.adapters.mail.sender.poller import MailPoller
from flowrt.dsl.model import Pos
from flowrt.engine.exchange import Exchange
from flowrt.net import ProxyRoute
from flowrt.runtime.schedule import Backoff, run_on_schedule
from flowrt.runtime.state import StateDB
from flowrt.security.secret import Secret
from tests.servers import DovecotServer, MailboxUser, TestCA

_counter = itertools.count(1)


def make_mail(subject: str = "", *, body: str = "hello", size: int = 0) -> bytes:
    """A small RFC 5322 mail with a unique Message-ID; ``size`` pads the body."""
    n = next(_counter)
    subject = subject or f"mail {n}"
    text = body + ("x" * max(0, size - len(body)))
    return (
        f"From: Plant <plant@example.com>\r\n"
        f"To: accounting@example.com\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        f"Message-ID: <test-{n}-{id(text)}@flowrt.test>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n{text}\r\n"
    ).encode()


def make_sender(
    protocol: Literal["imap", "pop3"] = "imap",
    *,
    port: int = 143,
    protection: str = "off",
    auth: str = "plain",
    folder: str = "INBOX",
    selection: str = "unread",
    max_messages: int = 100,
    post_process: PostProcess | None = None,
    poll: Poll | None = None,
    attachments: str = "keep",
    headers: tuple[str, ...] | None = None,
    keep_original: bool = False,
    allow_plaintext_auth: bool = True,
    timeout: float = 5.0,
    in_flight: int = 1,
) -> Sender:
    pos = Pos("test.flow", 1, 1)
    default_post = PostProcess("mark-read" if protocol == "imap" else "delete")
    return Sender(
        adapter="mail",
        protocol=protocol,
        connection=Connection(
            address=Address("127.0.0.1", port, True),
            proxy=Proxy("internet"),
            protection=protection,  # type: ignore[arg-type]
            auth=Auth(auth, "mailbox"),  # type: ignore[arg-type]
            timeout=dt.timedelta(seconds=timeout),
            allow_plaintext_auth=allow_plaintext_auth,
        ),
        folder=folder,
        selection=selection,  # type: ignore[arg-type]
        max_messages=max_messages,
        post_process=post_process or default_post,
        poll=poll or PollEvery(dt.timedelta(seconds=1)),
        attachments=attachments,  # type: ignore[arg-type]
        headers=headers,
        keep_original=keep_original,
        in_flight=in_flight,
        pos=pos,
        positions={},
    )


def protection_cases(protocol: Literal["imap", "pop3"]) -> list[tuple[str, str, str, bool]]:
    """(protection, port name, auth, TLS expected): each protection, with plain and encrypted
    auth, on the port it goes with (``imap`` or ``imaps``, ``pop3`` or ``pop3s``)."""
    implicit = f"{protocol}s"
    return [
        ("off", protocol, "plain", False),
        ("off", protocol, "encrypted", False),
        ("starttls-mandatory", protocol, "plain", True),
        ("starttls-optional", protocol, "encrypted", True),
        (implicit, implicit, "plain", True),
        (implicit, implicit, "encrypted", True),
    ]


def endpoint_for(
    sender: Sender,
    user: MailboxUser,
    *,
    tls: ssl.SSLContext | None = None,
    route: ProxyRoute | None = None,
    password: str | None = None,
) -> MailEndpoint:
    login = MailLogin(
        user.address, Secret(user.password if password is None else password), None, "mailbox"
    )
    return MailEndpoint.for_sender(sender, login=login, tls=tls, route=route)


class Recorder:
    """A ``handle`` that keeps every exchange; ``verdict`` decides True/False per exchange."""

    def __init__(self, verdict: Any = True) -> None:
        self.seen: list[Exchange] = []
        self.verdict = verdict
        self.event = asyncio.Event()

    async def __call__(self, exchange: Exchange) -> bool:
        self.seen.append(exchange)
        self.event.set()
        verdict = self.verdict(exchange) if callable(self.verdict) else self.verdict
        if isinstance(verdict, BaseException):
            raise verdict
        return bool(verdict)

    @property
    def subjects(self) -> list[str]:
        return [e.headers.get("Subject") or "" for e in self.seen]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDB]:
    with StateDB(tmp_path / "state.sqlite") as db:
        yield db


@pytest.fixture
def client_tls(test_ca: TestCA) -> ssl.SSLContext:
    """Trusts the test root only (the tenant keystore's job in production)."""
    return test_ca.client_context()


FAST = Backoff(initial=0.05, maximum=0.5)


def poller(
    sender: Sender,
    endpoint: MailEndpoint,
    handle: Any,
    state: StateDB,
    **kwargs: Any,
) -> MailPoller:
    return MailPoller(sender, endpoint, handle, state, **kwargs)


async def run(p: MailPoller, stop: asyncio.Event, backoff: Backoff = FAST) -> None:
    """The poller on its schedule, as the runtime runs it (fast backoff for tests)."""
    await run_on_schedule(p, stop, backoff=backoff)


def fill(
    dovecot: DovecotServer, user: MailboxUser, mails: list[bytes], folder: str = "INBOX"
) -> list[int]:
    uids = []
    for raw in mails:
        uid = dovecot.append(user.address, folder, raw)
        assert uid is not None
        uids.append(uid)
    return uids


def flags_by_subject(
    dovecot: DovecotServer, user: MailboxUser, folder: str = "INBOX"
) -> dict[str, tuple[str, ...]]:
    out = {}
    for _uid, flags, raw in dovecot.messages(user.address, folder):
        subject = next(
            (line[9:].decode() for line in raw.split(b"\r\n") if line.startswith(b"Subject: ")),
            "",
        )
        out[subject] = tuple(f for f in flags if f != "\\Recent")  # session-specific
    return out
