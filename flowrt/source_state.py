"""What a polling source and its state store share, so that neither imports the other.

The runtime implements the store (:class:`flowrt.runtime.state.StateDB`, with leases from
:mod:`flowrt.runtime.leases`) and injects it; an adapter's source (the mail poller) depends
only on :class:`SourceState`. The records are those the store keeps: idempotency records of
mails, lease locks, each poller's health, and the polls that could not run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from flowrt.errors import HandedBack, TenantError

__all__ = [
    "SOURCE_DELIVERED",
    "SOURCE_KEY",
    "SOURCE_RAW",
    "SOURCE_SCOPE",
    "UNREADABLE",
    "Fence",
    "Lease",
    "LeaseBusy",
    "LeaseLost",
    "LockInfo",
    "MailRecord",
    "Partition",
    "PollerHealth",
    "SourceState",
    "Verdict",
    "default_owner",
]


@dataclasses.dataclass(frozen=True)
class MailRecord:
    """What the state DB knows about one mail of one mailbox."""

    mailbox: str
    key: str
    generation: str
    message_id: str
    status: str  # "done" | "failed"
    attempts: int
    last_error: str
    action: str
    post_processed: bool
    created: float
    updated: float
    next_attempt: float = 0.0  # a failed mail is not handed over before this UNIX time

    @property
    def done(self) -> bool:
        return self.status == "done"


UNREADABLE = "source.unreadable"
"""Property of an exchange a source hands over for data it could not read (a mail that is
not one): the exception. The flow records the refusal in the MPL and gives its verdict."""
SOURCE_SCOPE = "source.scope"
SOURCE_KEY = "source.key"
SOURCE_RAW = "source.raw"
"""The scope and key of the idempotency record, and the raw bytes, of a handed-over item."""
SOURCE_DELIVERED = "source.delivered"
"""False when the source knows that no receiver has sent the item yet (the state store has
no recipients' rows for it; looked up once per poll): the flow then reads none."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the flow says about a mail it was handed (true when it finished with it).

    A failed mail is handed over again not before ``retry_at`` (a UNIX time; 0: at the next
    poll). ``dead_letter`` says its attempts are over: the source moves it to its dead-letter
    place (``dead_letter_place``, e.g. ``folder`` with ``dead_letter_folder``), records it
    as done, and calls ``dead_letter_failed`` with the error when that place cannot take it
    (the mail then stays as it was)."""

    ok: bool
    retry_at: float = 0.0
    dead_letter: bool = False
    dead_letter_place: str = ""  # default | folder | keep | delete | receiver
    dead_letter_folder: str = ""
    dead_letter_failed: Callable[[BaseException], None] | None = None
    error: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclasses.dataclass(frozen=True)
class LockInfo:
    key: str
    owner: str
    host: str
    pid: int
    info: str
    acquired: float
    renewed: float
    expires: float
    epoch: int = 0  # grows with every new holder (PostgreSQL store); 0 in SQLite

    @property
    def fence(self) -> Fence:
        return Fence(self.key, self.owner, self.epoch)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires

    def describe(self) -> str:
        return f"{self.owner} (pid {self.pid} on {self.host})"


@dataclasses.dataclass
class PollerHealth:
    """How a poller is doing; kept in memory by the poller and saved after every poll."""

    poller: str
    mailbox: str = ""
    last_poll: float | None = None
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    consecutive_failures: int = 0
    handled: int = 0
    failed: int = 0
    note: str = ""  # e.g. why the last poll was skipped

    @property
    def healthy(self) -> bool:
        return self.consecutive_failures == 0


@dataclasses.dataclass(frozen=True)
class Partition:
    """One of the ``count`` workers of a mailbox (``workers N``): it takes the mails whose
    UID leaves ``index`` when divided by ``count``, under a lease of its own. UIDs are the
    server's, so every worker process agrees on the split without asking the others."""

    index: int
    count: int

    def holds(self, uid: int) -> bool:
        return uid % self.count == self.index

    def describe(self) -> str:
        """``2/4``: the second of four workers (as lock keys and logs show it)."""
        return f"{self.index + 1}/{self.count}"


def default_owner() -> str:
    """An owner ID unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclasses.dataclass(frozen=True)
class Fence:
    """The lease a state write is made under: the write is refused (:class:`LeaseLost`)
    unless this owner still holds an unexpired lease ``key`` of this ``epoch``. That is what
    keeps a paused or partitioned poller, whose lease another node took meanwhile, from
    writing a final state for a mail the other node now owns."""

    key: str
    owner: str
    epoch: int = 0


class LeaseLost(HandedBack, TenantError):
    """A fenced state write found that the lease is no longer ours."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(
            f"the lease {fence.key} is no longer held by {fence.owner}; the write was refused",
            hint="another runtime node took the mailbox over (the lease expired or was "
            "released); it processes the mail",
        )
        self.fence = fence


class LeaseBusy(Exception):
    """Another owner holds the lease; ``holder`` says who, and until when."""

    def __init__(self, holder: LockInfo) -> None:
        super().__init__(holder.key)
        self.holder = holder


class Lease(Protocol):
    """A held lease; ``lost`` is set when it was taken away (released by hand, or taken over
    after it expired): the holder must stop at once."""

    @property
    def lost(self) -> asyncio.Event: ...
    @property
    def fence(self) -> Fence:
        """What the holder's state writes name (see :class:`Fence`)."""
        ...


class SourceState(Protocol):
    """The state store a source is given: idempotency records, health, leases."""

    def records(self, mailbox: str, keys: Iterable[str]) -> dict[str, MailRecord]: ...
    def find_by_message_ids(
        self, mailbox: str, message_ids: Iterable[str], *, other_generation_than: str
    ) -> set[str]: ...
    def delivered(self, mailbox: str, keys: Iterable[str]) -> set[str]:
        """Keys of mails that have recipients' rows (a receiver sent or tried them)."""
        ...

    def record_done(
        self,
        mailbox: str,
        key: str,
        *,
        generation: str,
        message_id: str,
        action: str,
        fence: Fence | None = None,
    ) -> None: ...
    def record_failure(
        self,
        mailbox: str,
        key: str,
        *,
        error: str,
        generation: str,
        message_id: str,
        next_attempt: float = 0.0,
        fence: Fence | None = None,
    ) -> int: ...
    def next_attempt_due(self, mailbox: str) -> float | None: ...
    @property
    def claim_id(self) -> str:
        """This store's name on a mail server (claims of mails against other runtimes)."""
        ...

    def replays(self, mailbox: str) -> list[str]: ...
    def take_replay(self, mailbox: str, key: str) -> None: ...
    def mark_post_processed(
        self, mailbox: str, keys: Sequence[str], *, fence: Fence | None = None
    ) -> None: ...
    def forget(self, mailbox: str, keys: Sequence[str], *, fence: Fence | None = None) -> int: ...
    def check_fence(self, fence: Fence) -> None:
        """:class:`LeaseLost` unless ``fence`` is the lease in force."""
        ...

    def keys(self, mailbox: str) -> list[str]: ...
    def purge_records(self, older_than: float, *, mailbox: str | None = None) -> int: ...
    def save_health(self, health: PollerHealth) -> None: ...

    def health(self, poller: str | None = None) -> list[PollerHealth]: ...
    def lease(
        self, key: str, owner: str, ttl: float, *, info: str = ""
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold ``key`` for the ``async with`` block, renewed while it runs; raises
        :class:`LeaseBusy` when another owner holds it."""
        ...
