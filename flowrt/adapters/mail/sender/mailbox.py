"""What the poller needs from a mailbox, whatever the protocol (IMAP or POP3).

The poller (:mod:`flowrt.adapters.mail.sender.poller`) owns the rules (idempotency, when the mailbox
may change, locks, health); a :class:`Mailbox` only lists candidate mails, fetches them in
batches and post-processes the ones the flow finished with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

__all__ = ["BATCH_BYTES", "BATCH_MAILS", "Candidate", "Mailbox", "message_id_of", "plan_batches"]

BATCH_BYTES = 8 * 2**20  # a fetch batch holds at most this much mail (one mail may exceed it)
BATCH_MAILS = 250

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(
    rb"^message-id:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)


@dataclasses.dataclass
class Candidate:
    """A mail the poller may process: ``ref`` is its IMAP UID or POP3 message number;
    ``key`` its idempotency key ('' until known: a POP3 server without UIDL)."""

    ref: int
    key: str
    size: int = 0
    uidl: str = ""


class Mailbox(Protocol):
    scope: str  # idempotency scope, e.g. "imap:user@host/INBOX"
    generation: str  # UID epoch (IMAP UIDVALIDITY), "" for POP3
    complete_listing: bool  # candidates() lists every mail (POP3): absent keys are gone

    async def candidates(self) -> list[Candidate]: ...

    def batches(
        self, todo: Sequence[Candidate]
    ) -> AsyncGenerator[list[tuple[Candidate, bytes]], None]: ...

    def properties(self, candidate: Candidate) -> dict[str, Any]: ...

    async def finish(self, done: Sequence[Candidate]) -> None: ...

    async def dead_letter(self, done: Sequence[Candidate], place: str, folder: str) -> None: ...

    # claiming a mail against runtimes that share no state store (IMAP CONDSTORE)
    @property
    def can_claim(self) -> bool: ...

    async def claim(self, todo: Sequence[Candidate]) -> list[Candidate]: ...

    async def release_claims(self) -> None: ...

    async def revive(self, keys: Sequence[str]) -> None: ...

    async def close(self) -> None: ...

    def abort(self) -> None: ...

    # push (IMAP IDLE); POP3 says no
    supports_idle: bool

    def clear_new_mail(self) -> None: ...

    def new_mail_pending(self) -> bool: ...

    async def wait_for_mail(self, wait: float, interrupt: asyncio.Event | None) -> bool: ...


def plan_batches(
    todo: Sequence[Candidate], *, max_bytes: int = BATCH_BYTES, max_mails: int = BATCH_MAILS
) -> list[list[Candidate]]:
    """Split ``todo`` into fetch batches that bound memory: by count and by size."""
    batches: list[list[Candidate]] = []
    current: list[Candidate] = []
    size = 0
    for candidate in todo:
        if current and (len(current) >= max_mails or size + candidate.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(candidate)
        size += candidate.size
    if current:
        batches.append(current)
    return batches


def message_id_of(raw: bytes) -> str:
    """The Message-ID of a raw mail (without <>), or ''; reads only the header block."""
    end = _HEADER_END.search(raw, 0, 256 * 1024)
    head = raw[: end.start()] if end else raw[: 256 * 1024]
    match = _MESSAGE_ID.search(head)
    if match is None:
        return ""
    value = re.sub(rb"\s+", b"", match.group(1))
    return value.decode("utf-8", "replace").strip("<>")


def content_key(raw: bytes) -> str:
    """A key for a mail the server gives no ID for: its Message-ID, else its digest."""
    message_id = message_id_of(raw)
    if message_id:
        return f"message-id:{message_id}"
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"
