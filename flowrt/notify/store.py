"""Every notification attempt, the per-recipient counters and the notifier's watermarks, in
``<tenant>/notify.sqlite`` (WAL, like the MPL and the state DB).

Why a table of attempts and no counter columns: what a recipient was sent in the last 24 hours
and what was held back are questions about the attempts themselves (``sent`` rows in the
window since the last reset, ``held`` rows not yet summarised in a digest), so the counters
can never disagree with the log that ``flowrt notify log`` shows.

An attempt's status is one of ``sent``, ``held`` (over the limit: summarised in the next mail
allowed), ``pending`` (being sent; a crash leaves it to be tried again), ``failed`` (the server
did not take it; retried at ``next_try``) or ``gave-up`` (failed too often; its chain stays).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

from flowrt._sqlite import open_wal
from flowrt.errors import TenantError
from flowrt.tenant import Tenant

__all__ = [
    "FAILED",
    "GAVE_UP",
    "HELD",
    "PENDING",
    "SENT",
    "Attempt",
    "Claim",
    "Counter",
    "NewAttempt",
    "NotifyLog",
    "NotifyStore",
    "open_log",
]

PENDING, SENT, HELD, FAILED, GAVE_UP = "pending", "sent", "held", "failed", "gave-up"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    created     REAL    NOT NULL,
    updated     REAL    NOT NULL,
    rule        TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    event_key   TEXT    NOT NULL,
    recipient   TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    mpl_id      TEXT    NOT NULL DEFAULT '',
    tries       INTEGER NOT NULL DEFAULT 0,
    next_try    REAL,
    chain       TEXT    NOT NULL DEFAULT '',
    hint        TEXT    NOT NULL DEFAULT '',
    reply       TEXT    NOT NULL DEFAULT '',
    digested_in INTEGER
);
CREATE INDEX IF NOT EXISTS attempts_by_recipient ON attempts (recipient, status, created);
CREATE INDEX IF NOT EXISTS attempts_due ON attempts (next_try) WHERE next_try IS NOT NULL;
CREATE TABLE IF NOT EXISTS resets (
    recipient TEXT PRIMARY KEY,
    at        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watch (
    message_id TEXT PRIMARY KEY
)
"""


@dataclasses.dataclass(frozen=True)
class Attempt:
    id: int
    created: float
    updated: float
    rule: str
    trigger: str
    event_key: str
    recipient: str
    status: str
    subject: str
    body: str
    mpl_id: str
    tries: int
    next_try: float | None
    chain: str
    hint: str
    reply: str
    digested_in: int | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``flowrt notify log --format json`` (and the monitor's API)."""
        return {
            "id": self.id,
            "created": iso(self.created),
            "updated": iso(self.updated),
            "status": self.status,
            "tries": self.tries,
            "recipient": self.recipient,
            "rule": self.rule,
            "trigger": self.trigger,
            "subject": self.subject,
            "mpl_id": self.mpl_id or None,
            "next_try": iso(self.next_try) if self.next_try is not None else None,
            "reply": self.reply or None,
            "chain": self.chain or None,
            "hint": self.hint or None,
            "digested_in": self.digested_in,
        }


def iso(timestamp: float) -> str:
    """``2024-05-01T10:00:00Z`` from epoch seconds."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class NewAttempt:
    """An alert to record as ``pending`` with its claim (:meth:`NotifyStore.claim`)."""

    rule: str
    trigger: str
    event_key: str
    recipient: str
    subject: str
    body: str
    mpl_id: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One notifier cycle's decisions, stored in one transaction by :meth:`NotifyStore.claim`:
    the marks it moved (the MPL watermark ...), the messages it starts or stops watching,
    and per ``seen`` key the attempts to record if no one claimed that key before."""

    marks: dict[str, str] = dataclasses.field(default_factory=dict)
    watch: frozenset[str] = frozenset()
    unwatch: frozenset[str] = frozenset()
    alerts: tuple[tuple[str, tuple[NewAttempt, ...]], ...] = ()


@dataclasses.dataclass(frozen=True)
class Counter:
    recipient: str
    sent: int  # in the current 24-hour window, since the last reset
    held: int  # held back and not yet summarised in a digest
    last_sent: float | None
    reset_at: float | None


_COLUMNS = ", ".join(f.name for f in dataclasses.fields(Attempt))


class NotifyStore:
    """One connection to ``notify.sqlite``; safe to share between threads."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = open_wal(
            path,
            name="notification log",
            error=lambda message, _cause: TenantError(message),
            create=create,
            timeout=10.0,
        )
        with self._guard("create") as conn:
            conn.executescript(_SCHEMA)

    @classmethod
    def open(cls, tenant: Tenant, *, create: bool = True) -> NotifyStore:
        """The SQLite log in the tenant directory (:func:`open_log` picks the backend)."""
        return cls(tenant.root / "notify.sqlite", create=create)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> NotifyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise TenantError(f"notification log {self.path}: {action} failed: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._guard(action) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ attempts

    def add(
        self,
        *,
        now: float,
        rule: str,
        trigger: str,
        event_key: str,
        recipient: str,
        status: str,
        subject: str,
        body: str,
        mpl_id: str = "",
    ) -> Attempt:
        with self._transaction("record an attempt") as conn:
            cursor = conn.execute(
                "INSERT INTO attempts (created, updated, rule, trigger, event_key, recipient, "
                "status, subject, body, mpl_id, next_try) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *(now, now, rule, trigger, event_key, recipient, status, subject, body),
                    *(mpl_id, now if status == PENDING else None),
                ),
            )
            attempt_id = int(cursor.lastrowid or 0)
        found = self.get(attempt_id)
        assert found is not None
        return found

    def mark_sent(
        self, attempt_id: int, *, now: float, reply: str, digested: Sequence[int]
    ) -> None:
        with self._transaction("record a sent mail") as conn:
            conn.execute(
                "UPDATE attempts SET status = ?, updated = ?, tries = tries + 1, next_try = NULL, "
                "reply = ?, chain = '', hint = '' WHERE id = ?",
                (SENT, now, reply, attempt_id),
            )
            conn.executemany(
                "UPDATE attempts SET digested_in = ? WHERE id = ?",
                [(attempt_id, held) for held in digested],
            )

    def mark_failed(
        self,
        attempt_id: int,
        *,
        now: float,
        chain: str,
        hint: str,
        next_try: float | None,
        tried: bool = True,
    ) -> None:
        """A failed try (``tried``), or one not made because the server just failed for
        another mail: both wait for ``next_try``; None gives up."""
        status = FAILED if next_try is not None else GAVE_UP
        with self._transaction("record a failed attempt") as conn:
            conn.execute(
                "UPDATE attempts SET status = ?, updated = ?, tries = tries + ?, next_try = ?, "
                "chain = ?, hint = ? WHERE id = ?",
                (status, now, int(tried), next_try, chain, hint, attempt_id),
            )

    def mark_held(self, attempt_id: int, *, now: float) -> None:
        with self._transaction("record a held alert") as conn:
            conn.execute(
                "UPDATE attempts SET status = ?, updated = ?, next_try = NULL WHERE id = ?",
                (HELD, now, attempt_id),
            )

    def due(self, now: float) -> list[Attempt]:
        """Failed (or interrupted) attempts whose next try has come, oldest first."""
        return self._select(
            "WHERE status IN (?, ?) AND next_try <= ? ORDER BY id", (FAILED, PENDING, now)
        )

    def held(self, recipient: str) -> list[Attempt]:
        """Alerts held back for ``recipient`` and not yet in a digest, oldest first."""
        return self._select(
            "WHERE recipient = ? AND status = ? AND digested_in IS NULL ORDER BY id",
            (recipient, HELD),
        )

    def get(self, attempt_id: int) -> Attempt | None:
        found = self._select("WHERE id = ?", (attempt_id,))
        return found[0] if found else None

    def attempts(
        self, *, recipient: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Attempt]:
        """Newest first."""
        where: list[str] = []
        args: list[Any] = []
        if recipient is not None:
            where.append("recipient = ?")
            args.append(recipient)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = ("WHERE " + " AND ".join(where) + " " if where else "") + "ORDER BY id DESC LIMIT ?"
        return self._select(sql, (*args, limit))

    def _select(self, tail: str, args: Sequence[Any]) -> list[Attempt]:
        with self._guard("read attempts") as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM attempts {tail}", args).fetchall()
        return [Attempt(*row) for row in rows]

    def claim(self, claim: Claim, *, now: float, hold: float) -> list[Attempt]:
        """Store ``claim`` in one transaction; the attempts it recorded (each ``seen`` key
        once: a key claimed before adds none), due again after ``hold`` seconds should their
        sender not get to them (it died)."""
        created: list[int] = []
        with self._transaction("record the alerts of a cycle") as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)", claim.marks.items()
            )
            conn.executemany(
                "INSERT OR IGNORE INTO watch (message_id) VALUES (?)", [(m,) for m in claim.watch]
            )
            conn.executemany(
                "DELETE FROM watch WHERE message_id = ?", [(m,) for m in claim.unwatch]
            )
            for key, attempts in claim.alerts:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO seen (key, at) VALUES (?, ?)", (key, now)
                )
                if cursor.rowcount != 1:
                    continue
                for a in attempts:
                    cursor = conn.execute(
                        "INSERT INTO attempts (created, updated, rule, trigger, event_key, "
                        "recipient, status, subject, body, mpl_id, next_try) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            *(now, now, a.rule, a.trigger, a.event_key, a.recipient, PENDING),
                            *(a.subject, a.body, a.mpl_id, now + hold),
                        ),
                    )
                    created.append(int(cursor.lastrowid or 0))
        return [a for a in (self.get(i) for i in created) if a is not None]

    def take_due(self, now: float, *, hold: float) -> list[Attempt]:
        """:meth:`due`, and each one's next try moved ``hold`` seconds on in the same
        transaction: the caller sends it, no one else."""
        if not self.due(now):  # the common case, without taking the write lock
            return []
        with self._transaction("take due attempts") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM attempts WHERE status IN (?, ?) AND next_try <= ? "
                "ORDER BY id",
                (FAILED, PENDING, now),
            ).fetchall()
            conn.executemany(
                "UPDATE attempts SET next_try = ? WHERE id = ?",
                [(now + hold, row[0]) for row in rows],
            )
        return [Attempt(*row) for row in rows]

    def watched(self) -> set[str]:
        """The messages a notifier saw unfinished and waits to see end."""
        with self._guard("read watched messages") as conn:
            return {str(r[0]) for r in conn.execute("SELECT message_id FROM watch")}

    # ------------------------------------------------------------------ counters

    def sent_in_window(self, recipient: str, *, now: float, window: float) -> int:
        since = max(now - window, self._reset_at(recipient) or 0.0)
        with self._guard("count sent mails") as conn:
            row = conn.execute(
                "SELECT count(*) FROM attempts WHERE recipient = ? AND status = ? AND updated > ?",
                (recipient, SENT, since),
            ).fetchone()
        return int(row[0])

    def _reset_at(self, recipient: str) -> float | None:
        with self._guard("read resets") as conn:
            row = conn.execute("SELECT at FROM resets WHERE recipient = ?", (recipient,)).fetchone()
        return None if row is None else float(row[0])

    def counters(self, *, now: float, window: float) -> list[Counter]:
        with self._guard("read counters") as conn:
            recipients = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT recipient FROM attempts WHERE recipient != '' "
                    "ORDER BY recipient"
                )
            ]
            counters = []
            for recipient in recipients:
                reset_at = self._reset_at(recipient)
                held, last = conn.execute(
                    "SELECT (SELECT count(*) FROM attempts WHERE recipient = ?1 AND status = ?2 "
                    "AND digested_in IS NULL), (SELECT max(updated) FROM attempts "
                    "WHERE recipient = ?1 AND status = ?3)",
                    (recipient, HELD, SENT),
                ).fetchone()
                counters.append(
                    Counter(
                        recipient=recipient,
                        sent=self.sent_in_window(recipient, now=now, window=window),
                        held=int(held),
                        last_sent=last,
                        reset_at=reset_at,
                    )
                )
        return counters

    def reset(self, recipient: str, *, now: float) -> bool:
        """Start the recipient's window afresh; False when nothing was ever sent to it."""
        with self._transaction("reset a counter") as conn:
            known = conn.execute(
                "SELECT 1 FROM attempts WHERE recipient = ? LIMIT 1", (recipient,)
            ).fetchone()
            if known is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO resets (recipient, at) VALUES (?, ?)", (recipient, now)
            )
        return True

    def purge(self, before: float) -> int:
        """Forget attempts and seen events older than ``before``; alerts still held for a
        digest stay, so that none is lost."""
        with self._transaction("purge") as conn:
            removed = conn.execute(
                "DELETE FROM attempts WHERE updated < ? AND NOT (status = ? AND digested_in IS "
                "NULL) AND status NOT IN (?, ?)",
                (before, HELD, FAILED, PENDING),
            ).rowcount
            conn.execute("DELETE FROM seen WHERE at < ?", (before,))
        return int(removed)

    # ------------------------------------------------------------------ what was seen

    def first_time(self, key: str, *, now: float) -> bool:
        """True the first time ``key`` is offered (an alert for a condition goes out once)."""
        with self._transaction("remember an event") as conn:
            cursor = conn.execute("INSERT OR IGNORE INTO seen (key, at) VALUES (?, ?)", (key, now))
            return cursor.rowcount == 1

    def mark(self, name: str) -> str | None:
        with self._guard("read a mark") as conn:
            row = conn.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_mark(self, name: str, value: str) -> None:
        with self._transaction("write a mark") as conn:
            conn.execute("INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)", (name, value))


class NotifyLog(Protocol):
    """What the notifier, ``flowrt notify`` and the monitor need of the notification log:
    :class:`NotifyStore` (``notify.sqlite``) or, on a store shared by several runtime nodes,
    :class:`~flowrt.store.pg.notify.PgNotifyStore`, so that the node sending the alerts
    (whichever holds the notifier's lease) decides from the same watermark, claims and
    counters as the one before it."""

    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def add(
        self,
        *,
        now: float,
        rule: str,
        trigger: str,
        event_key: str,
        recipient: str,
        status: str,
        subject: str,
        body: str,
        mpl_id: str = "",
    ) -> Attempt: ...
    def mark_sent(
        self, attempt_id: int, *, now: float, reply: str, digested: Sequence[int]
    ) -> None: ...
    def mark_failed(
        self,
        attempt_id: int,
        *,
        now: float,
        chain: str,
        hint: str,
        next_try: float | None,
        tried: bool = True,
    ) -> None: ...
    def mark_held(self, attempt_id: int, *, now: float) -> None: ...
    def due(self, now: float) -> list[Attempt]: ...
    def take_due(self, now: float, *, hold: float) -> list[Attempt]: ...
    def held(self, recipient: str) -> list[Attempt]: ...
    def get(self, attempt_id: int) -> Attempt | None: ...
    def attempts(
        self, *, recipient: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Attempt]: ...
    def claim(self, claim: Claim, *, now: float, hold: float) -> list[Attempt]: ...
    def watched(self) -> set[str]: ...
    def sent_in_window(self, recipient: str, *, now: float, window: float) -> int: ...
    def counters(self, *, now: float, window: float) -> list[Counter]: ...
    def reset(self, recipient: str, *, now: float) -> bool: ...
    def purge(self, before: float) -> int: ...
    def first_time(self, key: str, *, now: float) -> bool: ...
    def mark(self, name: str) -> str | None: ...
    def set_mark(self, name: str, value: str) -> None: ...


def open_log(tenant: Tenant, *, create: bool = True) -> NotifyLog | None:
    """The tenant's notification log; None when ``create`` is False and there is none yet
    (SQLite: no ``notify.sqlite``). On a PostgreSQL store it is in the store (migration
    0004), shared by every node."""
    from flowrt.store import is_shared, open_database

    if is_shared(tenant):
        from flowrt.store.pg.notify import PgNotifyStore

        return PgNotifyStore(open_database(tenant, max_size=2))
    path = tenant.root / "notify.sqlite"
    if not create and not path.exists():
        return None
    return NotifyStore(path, create=create)
