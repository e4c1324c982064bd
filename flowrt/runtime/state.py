"""The tenant's runtime state database (``<tenant>/state.sqlite``): idempotency records of
polled mails, lease locks on mailboxes, and the health of each poller.

Why a database and not files: the sender writes one idempotency record per mail, right after
the flow finished with it and before the mailbox is changed, and a crash must find it on
restart. SQLite in WAL mode makes each of those writes one small transaction that survives a
killed process (``synchronous = NORMAL``: durable against process crashes, which is what the
records guard against), and lets several runtime processes and ``flowrt locks`` share the
file safely.

Three tables::

    mail_records   (mailbox, key) -> status done|failed, attempts, Message-ID, generation,
                   post_processed: one row per mail a poller has seen through to a verdict
    locks          key -> owner, host, pid, acquired, renewed, expires: lease locks
    poller_health  poller -> last poll, last success, last error, consecutive failures
    poll_failures  every poll that could not run, with chain and hint
                   (:mod:`flowrt.poll_failures`)

A *mailbox* is a scope string such as ``imap:user@host/INBOX``; a *key* identifies a mail in
it (``uid:UIDVALIDITY:UID``, ``uidl:UIDL``, ``message-id:ID``). A *generation* is the scope's
UID epoch (the UIDVALIDITY for IMAP): a record from another generation is only found through
its Message-ID (:meth:`StateDB.find_by_message_ids`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flowrt import poll_failures
from flowrt._sqlite import begin_immediate, open_wal
from flowrt.errors import TenantError
from flowrt.poll_failures import PollFailure
from flowrt.runtime.leases import HeldLease
from flowrt.source_state import Fence, LockInfo, MailRecord, PollerHealth
from flowrt.tenant import Tenant

__all__ = [
    "LockInfo",
    "MailRecord",
    "PollFailure",
    "PollerHealth",
    "StateDB",
]

# Each entry upgrades the schema by one version (PRAGMA user_version); append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE mail_records (
        mailbox        TEXT    NOT NULL,
        key            TEXT    NOT NULL,
        generation     TEXT    NOT NULL DEFAULT '',
        message_id     TEXT    NOT NULL DEFAULT '',
        status         TEXT    NOT NULL CHECK (status IN ('done', 'failed')),
        attempts       INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT    NOT NULL DEFAULT '',
        action         TEXT    NOT NULL DEFAULT '',
        post_processed INTEGER NOT NULL DEFAULT 0,
        created        REAL    NOT NULL,
        updated        REAL    NOT NULL,
        PRIMARY KEY (mailbox, key)
    ) WITHOUT ROWID;
    CREATE INDEX mail_records_by_message_id ON mail_records (mailbox, message_id)
        WHERE message_id != '';
    CREATE TABLE locks (
        key      TEXT PRIMARY KEY,
        owner    TEXT NOT NULL,
        host     TEXT NOT NULL,
        pid      INTEGER NOT NULL,
        info     TEXT NOT NULL DEFAULT '',
        acquired REAL NOT NULL,
        renewed  REAL NOT NULL,
        expires  REAL NOT NULL
    );
    CREATE TABLE poller_health (
        poller               TEXT PRIMARY KEY,
        mailbox              TEXT NOT NULL DEFAULT '',
        last_poll            REAL,
        last_success         REAL,
        last_error           TEXT NOT NULL DEFAULT '',
        last_error_at        REAL,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        handled              INTEGER NOT NULL DEFAULT 0,
        failed               INTEGER NOT NULL DEFAULT 0,
        note                 TEXT NOT NULL DEFAULT '',
        updated              REAL NOT NULL
    );
    """,
    # 2: a failed mail's next hand-over time (backoff across polls); per-recipient delivery
    # state (a retry sends only to who does not have the mail yet); replay requests
    """
    ALTER TABLE mail_records ADD COLUMN next_attempt REAL NOT NULL DEFAULT 0;
    CREATE TABLE deliveries (
        mailbox   TEXT NOT NULL,
        key       TEXT NOT NULL,
        receiver  TEXT NOT NULL,
        recipient TEXT NOT NULL,
        state     TEXT NOT NULL CHECK (state IN ('sent', 'refused', 'pending')),
        reply     TEXT NOT NULL DEFAULT '',
        updated   REAL NOT NULL,
        PRIMARY KEY (mailbox, key, receiver, recipient)
    ) WITHOUT ROWID;
    CREATE TABLE replays (
        mailbox    TEXT NOT NULL,
        key        TEXT NOT NULL,
        message_id TEXT NOT NULL DEFAULT '',
        requested  REAL NOT NULL,
        PRIMARY KEY (mailbox, key)
    ) WITHOUT ROWID;
    """,
    # 3: the poll-failure log (flowrt.poll_failures)
    """
    CREATE TABLE poll_failures (
        id      INTEGER PRIMARY KEY,
        poller  TEXT NOT NULL,
        flow    TEXT NOT NULL DEFAULT '',
        at      REAL NOT NULL,
        kind    TEXT NOT NULL,
        summary TEXT NOT NULL,
        chain   TEXT NOT NULL,
        levels  TEXT NOT NULL DEFAULT '[]',
        hint    TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX poll_failures_by_flow ON poll_failures (flow, at);
    CREATE INDEX poll_failures_by_poller ON poll_failures (poller, id);
    """,
    # 4: find_by_message_ids looks the Message-IDs of every fetched batch up. SQLite (with
    # no statistics) preferred the primary key's mailbox prefix to the (mailbox, message_id)
    # index, scanning all of the mailbox's records; an index led by message_id is taken.
    """
    DROP INDEX mail_records_by_message_id;
    CREATE INDEX mail_records_by_message_id ON mail_records (message_id)
        WHERE message_id != '';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_CHUNK = 500  # keys per IN (...) query: well below SQLite's variable limit


_DAMAGED_HINT = (
    "another process may hold a long write lock; if the file is damaged, stop the runtime "
    "and move it away (idempotency records are lost then)"
)


def _state_error(message: str, _cause: sqlite3.Error | None) -> TenantError:
    return TenantError(message, hint=_DAMAGED_HINT)


class StateDB:
    """The runtime state database of a tenant. Safe to share between threads of a process
    and between processes; every method is one short transaction."""

    def __init__(self, path: str | Path, *, timeout: float = 10.0, create: bool = True) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self.lease_ttl: float | None = None
        self._lock = threading.RLock()
        self._batching = False  # inside batch(): writes are savepoints of its transaction
        self._conn = open_wal(
            self.path,
            name="runtime state database",
            error=_state_error,
            create=create,
            timeout=timeout,
            versioned=True,
        )
        try:
            with self._guard("open"):
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @property
    def claim_id(self) -> str:
        """Names this store's runtimes on a mail server (the IMAP claim keyword): stable
        across restarts, different for every state DB on every host."""
        where = f"{socket.gethostname()}:{self.path.resolve()}"
        return hashlib.sha256(where.encode()).hexdigest()[:12]

    @classmethod
    def open(cls, tenant: Tenant, *, create: bool = True) -> StateDB:
        return cls(tenant.state_path, create=create)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise TenantError(
                    f"runtime state database {self.path}: {action} failed: {exc}",
                    hint=_DAMAGED_HINT,
                ) from exc

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The writes inside are committed together, in one transaction (the records of
        mails that ended together); each write is a savepoint (or a single statement), so
        one that fails takes only itself back."""
        with self._guard("write mail records") as conn:
            if self._batching:
                yield
                return
            begin_immediate(conn, self._timeout)
            self._batching = True
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._batching = False
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _transaction(
        self, action: str, *, one_statement: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """A transaction of its own, or inside :meth:`batch` a savepoint, so that a write
        that fails takes back only itself. ``one_statement``: a single statement needs no
        savepoint (SQLite takes back a failed statement by itself)."""
        if self._batching and one_statement:
            with self._guard(action) as conn:
                yield conn
            return
        if self._batching:
            with self._guard(action) as conn:
                conn.execute("SAVEPOINT one")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK TO one")
                    conn.execute("RELEASE one")
                    raise
                conn.execute("RELEASE one")
            return
        with self._guard(action) as conn:
            begin_immediate(conn, self._timeout)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        if self._user_version() == SCHEMA_VERSION:
            return
        if self._user_version() > SCHEMA_VERSION:
            raise TenantError(
                f"the runtime state database {self.path} has schema version "
                f"{self._user_version()}; this flowrt knows up to {SCHEMA_VERSION}",
                hint="use the flowrt version that wrote it, or a newer one",
            )
        with self._transaction("migrate") as conn:
            # another process may have migrated while we waited for the write lock
            for target in range(self._user_version(), SCHEMA_VERSION):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target + 1}")

    def _user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ idempotency records

    def records(self, mailbox: str, keys: Iterable[str]) -> dict[str, MailRecord]:
        """The records of ``keys`` in ``mailbox`` that exist, by key."""
        rows = self._select_in(
            "read mail records",
            f"SELECT {_RECORD_COLUMNS} FROM mail_records WHERE mailbox = ? AND key IN ({{}})",
            (mailbox,),
            list(dict.fromkeys(keys)),
        )
        return {record.key: record for record in map(_record, rows)}

    def find_by_message_ids(
        self, mailbox: str, message_ids: Iterable[str], *, other_generation_than: str
    ) -> set[str]:
        """Which of ``message_ids`` have a ``done`` record from another generation (say,
        before the mailbox was rebuilt and UIDVALIDITY changed): the same mails, done.
        One query for a whole batch of fetched mails."""
        rows = self._select_in(
            "read mail records",
            # "message_id != ''" lets the partial index serve (the planner cannot know that
            # the bound values are not empty)
            "SELECT DISTINCT message_id FROM mail_records WHERE mailbox = ? AND "
            "message_id IN ({}) AND message_id != '' AND generation != ? AND status = 'done'",
            (mailbox,),
            [m for m in dict.fromkeys(message_ids) if m],
            (other_generation_than,),
        )
        return {str(row[0]) for row in rows}

    def _select_in(
        self,
        action: str,
        sql: str,
        before: tuple[Any, ...],
        values: list[str],
        after: tuple[Any, ...] = (),
    ) -> list[Any]:
        """The rows of ``sql`` (``{}`` where its IN list goes) for all ``values``, asked
        _CHUNK at a time; ``before`` and ``after`` are the parameters around the list."""
        found: list[Any] = []
        with self._guard(action) as conn:
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found += conn.execute(sql.format(marks), (*before, *chunk, *after))
        return found

    def record_done(
        self,
        mailbox: str,
        key: str,
        *,
        generation: str = "",
        message_id: str = "",
        action: str = "",
        fence: Fence | None = None,
    ) -> None:
        """The flow finished with this mail. Committed before returning (inside
        :meth:`batch`: with the batch, still before the mailbox changes): this is what stops
        a resend when the process dies before the mailbox was changed."""
        now = time.time()
        # one statement (the fence check reads nothing in SQLite; see _check_fence)
        with self._transaction("write a mail record", one_statement=True) as conn:
            _check_fence(conn, fence, now)
            conn.execute(
                "INSERT INTO mail_records (mailbox, key, generation, message_id, status, "
                "attempts, action, post_processed, created, updated) "
                "VALUES (?, ?, ?, ?, 'done', 1, ?, 0, ?, ?) "
                "ON CONFLICT (mailbox, key) DO UPDATE SET status = 'done', "
                "attempts = attempts + 1, generation = excluded.generation, "
                "message_id = excluded.message_id, action = excluded.action, "
                "post_processed = 0, updated = excluded.updated",
                (mailbox, key, generation, message_id, action, now, now),
            )

    def record_failure(
        self,
        mailbox: str,
        key: str,
        *,
        error: str,
        generation: str = "",
        message_id: str = "",
        next_attempt: float = 0.0,
        fence: Fence | None = None,
    ) -> int:
        """The flow failed with this mail (it stays in the mailbox as it was); returns how
        many times it has failed so far. A ``done`` record is never turned back.
        ``next_attempt`` (a UNIX time) is when it may be handed over again."""
        now = time.time()
        with self._transaction("write a mail record") as conn:
            _check_fence(conn, fence, now)
            conn.execute(
                "INSERT INTO mail_records (mailbox, key, generation, message_id, status, "
                "attempts, last_error, created, updated, next_attempt) "
                "VALUES (?, ?, ?, ?, 'failed', 1, ?, ?, ?, ?) "
                "ON CONFLICT (mailbox, key) DO UPDATE SET attempts = attempts + 1, "
                "last_error = excluded.last_error, updated = excluded.updated, "
                "next_attempt = excluded.next_attempt "
                "WHERE status = 'failed'",
                (mailbox, key, generation, message_id, error, now, now, next_attempt),
            )
            row = conn.execute(
                "SELECT attempts FROM mail_records WHERE mailbox = ? AND key = ?",
                (mailbox, key),
            ).fetchone()
        return int(row[0]) if row else 1

    def mark_post_processed(
        self, mailbox: str, keys: Sequence[str], *, fence: Fence | None = None
    ) -> None:
        """The mailbox was changed for these mails (marked, deleted, moved, or kept)."""
        now = time.time()
        with self._transaction("update mail records") as conn:
            _check_fence(conn, fence, now)
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                conn.execute(
                    f"UPDATE mail_records SET post_processed = 1, updated = ? "
                    f"WHERE mailbox = ? AND key IN ({marks})",
                    (now, mailbox, *chunk),
                )

    def forget(self, mailbox: str, keys: Sequence[str], *, fence: Fence | None = None) -> int:
        """Drop the records of ``keys`` (mails that are gone from the mailbox)."""
        removed = 0
        with self._transaction("delete mail records") as conn:
            _check_fence(conn, fence, time.time())
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                cursor = conn.execute(
                    f"DELETE FROM mail_records WHERE mailbox = ? AND key IN ({marks})",
                    (mailbox, *chunk),
                )
                removed += cursor.rowcount
        return removed

    def keys(self, mailbox: str) -> list[str]:
        with self._guard("read mail records") as conn:
            rows = conn.execute("SELECT key FROM mail_records WHERE mailbox = ?", (mailbox,))
            return [str(row[0]) for row in rows]

    def purge_records(self, older_than: float, *, mailbox: str | None = None) -> int:
        """Drop post-processed records not touched since ``older_than`` (a UNIX time), except
        those of kept mails: a kept mail is still in the mailbox, and only its record stops
        it from being processed again."""
        sql = (
            "DELETE FROM mail_records WHERE updated < ? AND "
            "((status = 'done' AND post_processed = 1 AND action != 'keep' "
            "AND action NOT LIKE 'dead-letter%') OR status = 'failed')"
        )
        args: list[Any] = [older_than]
        if mailbox is not None:
            sql += " AND mailbox = ?"
            args.append(mailbox)
        with self._transaction("purge mail records") as conn:
            removed = conn.execute(sql, args).rowcount
            conn.execute(
                "DELETE FROM deliveries WHERE updated < ? AND NOT EXISTS (SELECT 1 FROM "
                "mail_records r WHERE r.mailbox = deliveries.mailbox AND r.key = deliveries.key)",
                (older_than,),
            )
            return removed

    def next_attempt_due(self, mailbox: str) -> float | None:
        """The earliest time a failed mail of ``mailbox`` may be handed over again (a
        held IDLE session wakes up for it), or None."""
        with self._guard("read mail records") as conn:
            row = conn.execute(
                "SELECT MIN(next_attempt) FROM mail_records WHERE mailbox = ? AND "
                "status = 'failed' AND next_attempt > 0",
                (mailbox,),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # ------------------------------------------------------------------ per recipient

    def deliveries(self, mailbox: str, key: str) -> list[tuple[str, str, str, str]]:
        """What each recipient of each receiver got so far: (receiver, recipient, state,
        reply), state ``sent`` | ``refused`` (final) | ``pending`` (4xx, tried again)."""
        with self._guard("read deliveries") as conn:
            rows = conn.execute(
                "SELECT receiver, recipient, state, reply FROM deliveries "
                "WHERE mailbox = ? AND key = ? ORDER BY receiver, recipient",
                (mailbox, key),
            ).fetchall()
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def delivered(self, mailbox: str, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` have recipients' rows: mails a receiver sent (or tried to send)
        before. One query for a batch of mails; the others need no lookup of their rows."""
        rows = self._select_in(
            "read deliveries",
            "SELECT DISTINCT key FROM deliveries WHERE mailbox = ? AND key IN ({})",
            (mailbox,),
            list(dict.fromkeys(keys)),
        )
        return {str(row[0]) for row in rows}

    def save_deliveries(
        self, mailbox: str, key: str, rows: Iterable[tuple[str, str, str, str]]
    ) -> None:
        """Write (receiver, recipient, state, reply) rows; committed before returning, since
        it is what keeps a recipient that has the mail from getting it again."""
        now = time.time()
        with self._transaction("write deliveries") as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO deliveries "
                "(mailbox, key, receiver, recipient, state, reply, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(mailbox, key, r, a, st, rep, now) for r, a, st, rep in rows],
            )

    # ------------------------------------------------------------------ replays

    def request_replay(self, mailbox: str, key: str, *, message_id: str = "") -> None:
        """Ask the poller of ``mailbox`` to hand this dead-lettered mail over once more."""
        with self._transaction("request a replay") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO replays (mailbox, key, message_id, requested) "
                "VALUES (?, ?, ?, ?)",
                (mailbox, key, message_id, time.time()),
            )

    def replays(self, mailbox: str) -> list[str]:
        """Keys of ``mailbox`` whose replay was asked for and not yet taken."""
        with self._guard("read replays") as conn:
            rows = conn.execute("SELECT key FROM replays WHERE mailbox = ?", (mailbox,))
            return [str(row[0]) for row in rows]

    def take_replay(self, mailbox: str, key: str) -> None:
        """The poller put the mail back: its record starts over (attempts 0); recipients
        refused for good may be tried again, those that have the mail still do not get it."""
        with self._transaction("take a replay") as conn:
            conn.execute("DELETE FROM replays WHERE mailbox = ? AND key = ?", (mailbox, key))
            conn.execute("DELETE FROM mail_records WHERE mailbox = ? AND key = ?", (mailbox, key))
            conn.execute(
                "DELETE FROM deliveries WHERE mailbox = ? AND key = ? AND state != 'sent'",
                (mailbox, key),
            )

    def dead_letter_count(self) -> int:
        """Mails that ended in their dead-letter place and were not replayed."""
        with self._guard("read mail records") as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM mail_records WHERE action LIKE 'dead-letter%'"
            ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ lease locks

    def acquire_lock(
        self, key: str, owner: str, ttl: float, *, info: str = ""
    ) -> tuple[bool, LockInfo]:
        """Take (or renew) the lease ``key`` for ``ttl`` seconds.

        Returns ``(True, lease)`` when ``owner`` holds it now, or ``(False, holder)`` when
        another owner holds a lease that has not expired. An expired lease is taken over:
        its holder is gone or stuck, and the lease is what lets the mailbox heal by itself.
        So is the lease of a process on this host that no longer exists: a runtime that
        crashed and was restarted polls again at once instead of after the lease expired.
        """
        now = time.time()
        with self._transaction("take a lock") as conn:
            row = conn.execute(
                f"SELECT {_LOCK_COLUMNS} FROM locks WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                holder = _lock(row)
                if holder.owner != owner and not holder.expired(now) and not dead_holder(holder):
                    return False, holder
            acquired = now
            if row is not None and _lock(row).owner == owner:
                acquired = _lock(row).acquired
            lease = LockInfo(
                key, owner, socket.gethostname(), os.getpid(), info, acquired, now, now + ttl
            )
            conn.execute(
                f"INSERT OR REPLACE INTO locks ({_LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(lease)[:8],
            )
        return True, lease

    def renew_lock(self, key: str, owner: str, ttl: float) -> bool:
        """Extend our lease; False when it is not ours any more (released by `flowrt locks
        release`, or taken over after it expired): the holder must stop at once."""
        now = time.time()
        with self._transaction("renew a lock") as conn:
            cursor = conn.execute(
                "UPDATE locks SET renewed = ?, expires = ? WHERE key = ? AND owner = ?",
                (now, now + ttl, key, owner),
            )
            return cursor.rowcount == 1

    def check_fence(self, fence: Fence) -> None:
        """LeaseLost unless ``fence`` is still the lease in force (before changing the
        mailbox, which is outside any transaction)."""
        with self._guard("check a lock") as conn:
            _check_fence(conn, fence, time.time())

    def release_lock(self, key: str, owner: str) -> bool:
        with self._transaction("release a lock") as conn:
            cursor = conn.execute("DELETE FROM locks WHERE key = ? AND owner = ?", (key, owner))
            return cursor.rowcount == 1

    def lease(self, key: str, owner: str, ttl: float, *, info: str = "") -> HeldLease:
        """The lease ``key`` held for an ``async with`` block and renewed while it runs
        (for :attr:`lease_ttl` seconds when the runtime set one: ``flowrt run --lease``)."""
        return HeldLease(self, key, owner, self.lease_ttl or ttl, info=info)

    def force_release(self, key: str) -> LockInfo | None:
        """Remove the lock ``key`` whoever holds it; the removed lock, or None if none."""
        with self._transaction("release a lock") as conn:
            row = conn.execute(
                f"SELECT {_LOCK_COLUMNS} FROM locks WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM locks WHERE key = ?", (key,))
        return _lock(row)

    def locks(self) -> list[LockInfo]:
        with self._guard("read locks") as conn:
            rows = conn.execute(f"SELECT {_LOCK_COLUMNS} FROM locks ORDER BY key").fetchall()
        return [_lock(row) for row in rows]

    # ------------------------------------------------------------------ poller health

    def save_health(self, health: PollerHealth) -> None:
        row = dataclasses.astuple(health)
        with self._transaction("save poller health") as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO poller_health ({_HEALTH_COLUMNS}, updated) "
                f"VALUES ({','.join('?' * len(row))}, ?)",
                (*row, time.time()),
            )

    def health(self, poller: str | None = None) -> list[PollerHealth]:
        sql = f"SELECT {_HEALTH_COLUMNS} FROM poller_health"
        args: tuple[str, ...] = ()
        if poller is not None:
            sql += " WHERE poller = ?"
            args = (poller,)
        with self._guard("read poller health") as conn:
            rows = conn.execute(sql + " ORDER BY poller", args).fetchall()
        return [PollerHealth(*row) for row in rows]

    # ------------------------------------------------------------------ poll failures

    def record_poll_failure(self, failure: PollFailure) -> None:
        """Log a poll that could not run; keeps the newest KEEP_PER_POLLER per poller."""
        with self._transaction("record a poll failure") as conn:
            conn.execute(poll_failures.insert_sql("?"), failure.row())
            conn.execute(
                poll_failures.prune_sql("?"),
                (failure.poller, failure.poller, poll_failures.KEEP_PER_POLLER),
            )

    def poll_failures(
        self, flow: str | None = None, *, limit: int = 50, since: float | None = None
    ) -> list[PollFailure]:
        """The newest poll failures first, of one flow or of all."""
        sql, args = poll_failures.select_sql("?", flow, since, limit)
        with self._guard("read poll failures") as conn:
            rows = conn.execute(sql, args).fetchall()
        return [PollFailure.from_row(tuple(row)) for row in rows]


_RECORD_COLUMNS = ", ".join(f.name for f in dataclasses.fields(MailRecord))
_LOCK_COLUMNS = ", ".join(f.name for f in dataclasses.fields(LockInfo) if f.name != "epoch")
_HEALTH_COLUMNS = ", ".join(f.name for f in dataclasses.fields(PollerHealth))


def _record(row: Sequence[Any]) -> MailRecord:
    values = list(row)
    values[8] = bool(values[8])
    return MailRecord(*values)


def _lock(row: Sequence[Any]) -> LockInfo:
    return LockInfo(*row)


def _check_fence(conn: sqlite3.Connection, fence: Fence | None, now: float) -> None:
    """Writes to the SQLite store are not fenced: one runtime uses a tenant's files at a
    time (the runtime lock), and a lease released by ``flowrt locks release`` lets the mail
    in hand finish and be marked, as it always did. Fencing is what the PostgreSQL store,
    shared by several nodes, adds (:mod:`flowrt.store.pg.state`)."""
    del conn, fence, now


def dead_holder(holder: LockInfo) -> bool:
    """Whether the holder is a process of this host that is gone."""
    if holder.host != socket.gethostname() or holder.pid == os.getpid() or holder.pid <= 0:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user
        return False
    return False
