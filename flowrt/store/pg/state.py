"""The runtime state on PostgreSQL: idempotency records, leases, poller health and the
runtime node registry, shared by every node of the tenant.

Same methods as :class:`~flowrt.runtime.state.StateDB`. Differences that matter with
several nodes:

- Lease times come from the database's clock, not the node's, so nodes with skewed clocks
  agree on when a lease expires.
- Every new holder of a lease gets a new epoch (a sequence), and a fenced write checks, in
  its own transaction, that its (key, owner, epoch) is still the lease in force. The check
  takes the lock row ``FOR SHARE``: a takeover waits for the write to commit, or the write
  sees the takeover and is refused (:class:`~flowrt.runtime.state.LeaseLost`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg

from flowrt import poll_failures
from flowrt.errors import TenantError
from flowrt.poll_failures import PollFailure
from flowrt.runtime.leases import HeldLease
from flowrt.runtime.state import dead_holder
from flowrt.source_state import Fence, LeaseLost, LockInfo, MailRecord, PollerHealth
from flowrt.store.pg.connect import PgDatabase

__all__ = ["NodeInfo", "PgStateDB"]

_RECORD_COLUMNS = ", ".join(f.name for f in dataclasses.fields(MailRecord))
_LOCK_COLUMNS = ", ".join(f.name for f in dataclasses.fields(LockInfo))
_HEALTH_COLUMNS = ", ".join(f.name for f in dataclasses.fields(PollerHealth))
_NOW = "SELECT extract(epoch from clock_timestamp())::float8"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """A runtime node as registered in the store."""

    name: str
    host: str
    pid: int
    started: float
    heartbeat: float
    stopped: bool
    status: dict[str, Any]

    def alive(self, now: float, ttl: float) -> bool:
        if self.stopped or now - self.heartbeat >= ttl:
            return False
        probe = LockInfo(self.name, self.name, self.host, self.pid, "", 0, 0, 0)
        return not dead_holder(probe)  # a node of this host whose process is gone


class PgStateDB:
    """The runtime state of a tenant whose store is PostgreSQL. ``db`` is owned."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.path = db.shown
        self.node: str | None = None
        self.lease_ttl: float | None = None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> PgStateDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _guard(self, action: str) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        return self.db.guarded(
            f"runtime state in {self.path}",
            action,
            hint="is PostgreSQL running and reachable? The poller tries again",
        )

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[tuple[psycopg.Connection[Any], float]]:
        """A transaction and the database's clock at its start."""
        with self._guard(action) as conn, conn.transaction():
            row = conn.execute(_NOW).fetchone()
            assert row is not None
            yield conn, float(row[0])

    def now(self) -> float:
        with self._guard("read the clock") as conn:
            row = conn.execute(_NOW).fetchone()
        assert row is not None
        return float(row[0])

    # ------------------------------------------------------------------ fencing

    @staticmethod
    def _fenced(conn: psycopg.Connection[Any], fence: Fence | None, now: float) -> None:
        if fence is None:
            return
        row = conn.execute(
            "SELECT 1 FROM locks WHERE key = %s AND owner = %s AND epoch = %s AND expires > %s "
            "FOR SHARE",
            (fence.key, fence.owner, fence.epoch, now),
        ).fetchone()
        if row is None:
            raise LeaseLost(fence)

    def check_fence(self, fence: Fence) -> None:
        with self._transaction("check a lock") as (conn, now):
            self._fenced(conn, fence, now)

    # ------------------------------------------------------------------ idempotency records

    def records(self, mailbox: str, keys: Iterable[str]) -> dict[str, MailRecord]:
        rows = self._select_any(
            "read mail records",
            f"SELECT {_RECORD_COLUMNS} FROM mail_records "
            "WHERE mailbox = %s AND key = ANY(%s)".encode(),
            (mailbox,),
            list(dict.fromkeys(keys)),
        )
        return {record.key: record for record in map(_record, rows)}

    def find_by_message_ids(
        self, mailbox: str, message_ids: Iterable[str], *, other_generation_than: str
    ) -> set[str]:
        rows = self._select_any(
            "read mail records",
            # "message_id <> ''" lets the partial index serve a generic plan (a prepared
            # statement's), which cannot know that the bound values are not empty
            "SELECT DISTINCT message_id FROM mail_records WHERE mailbox = %s AND "
            "message_id = ANY(%s) AND message_id <> '' AND generation <> %s AND "
            "status = 'done'",
            (mailbox,),
            [m for m in dict.fromkeys(message_ids) if m],
            (other_generation_than,),
        )
        return {str(row[0]) for row in rows}

    def _select_any(
        self,
        action: str,
        sql: str | bytes,
        before: tuple[Any, ...],
        values: list[str],
        after: tuple[Any, ...] = (),
    ) -> list[Any]:
        """The rows of ``sql`` (its ``= ANY(%s)`` takes the list) for all ``values``, 1,000
        at a time; ``before`` and ``after`` are the parameters around the list (the twin of
        StateDB._select_in)."""
        found: list[Any] = []
        with self._guard(action) as conn:
            for start in range(0, len(values), 1000):
                found += conn.execute(sql, (*before, values[start : start + 1000], *after))
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
        with self._transaction("write a mail record") as (conn, now):
            self._fenced(conn, fence, now)
            conn.execute(
                "INSERT INTO mail_records (mailbox, key, generation, message_id, status, "
                "attempts, action, post_processed, created, updated) "
                "VALUES (%s, %s, %s, %s, 'done', 1, %s, 0, %s, %s) "
                "ON CONFLICT (mailbox, key) DO UPDATE SET status = 'done', "
                "attempts = mail_records.attempts + 1, generation = excluded.generation, "
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
        with self._transaction("write a mail record") as (conn, now):
            self._fenced(conn, fence, now)
            conn.execute(
                "INSERT INTO mail_records (mailbox, key, generation, message_id, status, "
                "attempts, last_error, created, updated, next_attempt) "
                "VALUES (%s, %s, %s, %s, 'failed', 1, %s, %s, %s, %s) "
                "ON CONFLICT (mailbox, key) DO UPDATE SET "
                "attempts = mail_records.attempts + 1, last_error = excluded.last_error, "
                "updated = excluded.updated, next_attempt = excluded.next_attempt "
                "WHERE mail_records.status = 'failed'",
                (mailbox, key, generation, message_id, error, now, now, next_attempt),
            )
            row = conn.execute(
                "SELECT attempts FROM mail_records WHERE mailbox = %s AND key = %s",
                (mailbox, key),
            ).fetchone()
        return int(row[0]) if row else 1

    def mark_post_processed(
        self, mailbox: str, keys: Sequence[str], *, fence: Fence | None = None
    ) -> None:
        with self._transaction("update mail records") as (conn, now):
            self._fenced(conn, fence, now)
            conn.execute(
                "UPDATE mail_records SET post_processed = 1, updated = %s "
                "WHERE mailbox = %s AND key = ANY(%s)",
                (now, mailbox, list(keys)),
            )

    def forget(self, mailbox: str, keys: Sequence[str], *, fence: Fence | None = None) -> int:
        with self._transaction("delete mail records") as (conn, now):
            self._fenced(conn, fence, now)
            cursor = conn.execute(
                "DELETE FROM mail_records WHERE mailbox = %s AND key = ANY(%s)",
                (mailbox, list(keys)),
            )
            return cursor.rowcount

    def keys(self, mailbox: str) -> list[str]:
        with self._guard("read mail records") as conn:
            rows = conn.execute("SELECT key FROM mail_records WHERE mailbox = %s", (mailbox,))
            return [str(row[0]) for row in rows]

    def purge_records(self, older_than: float, *, mailbox: str | None = None) -> int:
        sql = (
            "DELETE FROM mail_records WHERE updated < %s AND "
            "((status = 'done' AND post_processed = 1 AND action <> 'keep' "
            "AND action NOT LIKE 'dead-letter%%') OR status = 'failed')"
        )
        args: list[Any] = [older_than]
        if mailbox is not None:
            sql += " AND mailbox = %s"
            args.append(mailbox)
        with self._guard("purge mail records") as conn, conn.transaction():
            removed = conn.execute(sql.encode(), args).rowcount
            conn.execute(
                "DELETE FROM deliveries WHERE updated < %s AND NOT EXISTS (SELECT 1 FROM "
                "mail_records r WHERE r.mailbox = deliveries.mailbox AND r.key = deliveries.key)",
                (older_than,),
            )
            return removed

    @property
    def claim_id(self) -> str:
        """Names this tenant's runtimes on a mail server (the IMAP claim keyword): the same
        for every node, since the nodes share the mailboxes' records; another tenant (its
        own database) has another."""
        return hashlib.sha256(f"pg:{self.db.config.tenant_id}".encode()).hexdigest()[:12]

    def next_attempt_due(self, mailbox: str) -> float | None:
        with self._guard("read mail records") as conn:
            row = conn.execute(
                "SELECT min(next_attempt) FROM mail_records WHERE mailbox = %s AND "
                "status = 'failed' AND next_attempt > 0",
                (mailbox,),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # ------------------------------------------------------------------ per recipient

    def deliveries(self, mailbox: str, key: str) -> list[tuple[str, str, str, str]]:
        with self._guard("read deliveries") as conn:
            rows = conn.execute(
                "SELECT receiver, recipient, state, reply FROM deliveries "
                "WHERE mailbox = %s AND key = %s ORDER BY receiver, recipient",
                (mailbox, key),
            ).fetchall()
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def delivered(self, mailbox: str, keys: Iterable[str]) -> set[str]:
        rows = self._select_any(
            "read deliveries",
            "SELECT DISTINCT key FROM deliveries WHERE mailbox = %s AND key = ANY(%s)",
            (mailbox,),
            list(dict.fromkeys(keys)),
        )
        return {str(row[0]) for row in rows}

    def save_deliveries(
        self, mailbox: str, key: str, rows: Iterable[tuple[str, str, str, str]]
    ) -> None:
        with self._transaction("write deliveries") as (conn, now), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO deliveries (mailbox, key, receiver, recipient, state, reply, "
                "updated) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (mailbox, key, "
                "receiver, recipient) DO UPDATE SET state = excluded.state, "
                "reply = excluded.reply, updated = excluded.updated",
                [(mailbox, key, r, a, st, rep, now) for r, a, st, rep in rows],
            )

    # ------------------------------------------------------------------ replays

    def request_replay(self, mailbox: str, key: str, *, message_id: str = "") -> None:
        with self._transaction("request a replay") as (conn, now):
            conn.execute(
                "INSERT INTO replays (mailbox, key, message_id, requested) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (mailbox, key) DO UPDATE SET "
                "message_id = excluded.message_id, requested = excluded.requested",
                (mailbox, key, message_id, now),
            )

    def replays(self, mailbox: str) -> list[str]:
        with self._guard("read replays") as conn:
            rows = conn.execute("SELECT key FROM replays WHERE mailbox = %s", (mailbox,))
            return [str(row[0]) for row in rows]

    def take_replay(self, mailbox: str, key: str) -> None:
        with self._transaction("take a replay") as (conn, _now):
            for sql in (
                "DELETE FROM replays WHERE mailbox = %s AND key = %s",
                "DELETE FROM mail_records WHERE mailbox = %s AND key = %s",
                "DELETE FROM deliveries WHERE mailbox = %s AND key = %s AND state <> 'sent'",
            ):
                conn.execute(sql.encode(), (mailbox, key))

    def dead_letter_count(self) -> int:
        with self._guard("read mail records") as conn:
            row = conn.execute(
                "SELECT count(*) FROM mail_records WHERE action LIKE 'dead-letter%'"
            ).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ lease locks

    def acquire_lock(
        self, key: str, owner: str, ttl: float, *, info: str = ""
    ) -> tuple[bool, LockInfo]:
        """As :meth:`StateDB.acquire_lock`; a new holder gets a new epoch."""
        with self._transaction("take a lock") as (conn, now):
            # one taker at a time per key, also when there is no row yet to lock
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
            row = conn.execute(
                f"SELECT {_LOCK_COLUMNS} FROM locks WHERE key = %s".encode(), (key,)
            ).fetchone()
            holder = None if row is None else LockInfo(*row)
            if (
                holder is not None
                and holder.owner != owner
                and not holder.expired(now)
                and not dead_holder(holder)
            ):
                return False, holder
            if holder is not None and holder.owner == owner and not holder.expired(now):
                epoch, acquired = holder.epoch, holder.acquired
            else:
                got = conn.execute("SELECT nextval('lock_epochs')").fetchone()
                assert got is not None
                epoch, acquired = int(got[0]), now
            lease = LockInfo(
                key,
                owner,
                socket.gethostname(),
                os.getpid(),
                info,
                acquired,
                now,
                now + ttl,
                epoch,
            )
            conn.execute(
                f"INSERT INTO locks ({_LOCK_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
                "owner = excluded.owner, host = excluded.host, pid = excluded.pid, "
                "info = excluded.info, acquired = excluded.acquired, "
                "renewed = excluded.renewed, expires = excluded.expires, "
                "epoch = excluded.epoch".encode(),
                dataclasses.astuple(lease),
            )
        return True, lease

    def renew_lock(self, key: str, owner: str, ttl: float) -> bool:
        with self._transaction("renew a lock") as (conn, now):
            cursor = conn.execute(
                "UPDATE locks SET renewed = %s, expires = %s WHERE key = %s AND owner = %s",
                (now, now + ttl, key, owner),
            )
            return cursor.rowcount == 1

    def lease(self, key: str, owner: str, ttl: float, *, info: str = "") -> HeldLease:
        """As :meth:`StateDB.lease`; a node's leases are owned by ``NODE/owner``, which is
        how `flowrt status` tells which node holds what."""
        if self.node is not None:
            owner = f"{self.node}/{owner}"
        return HeldLease(self, key, owner, self.lease_ttl or ttl, info=info)

    def release_lock(self, key: str, owner: str) -> bool:
        with self._guard("release a lock") as conn:
            cursor = conn.execute("DELETE FROM locks WHERE key = %s AND owner = %s", (key, owner))
            return cursor.rowcount == 1

    def force_release(self, key: str) -> LockInfo | None:
        with self._guard("release a lock") as conn:
            row = conn.execute(
                f"DELETE FROM locks WHERE key = %s RETURNING {_LOCK_COLUMNS}".encode(), (key,)
            ).fetchone()
        return None if row is None else LockInfo(*row)

    def locks(self) -> list[LockInfo]:
        with self._guard("read locks") as conn:
            rows = conn.execute(
                f"SELECT {_LOCK_COLUMNS} FROM locks ORDER BY key".encode()
            ).fetchall()
        return [LockInfo(*row) for row in rows]

    # ------------------------------------------------------------------ poller health

    def save_health(self, health: PollerHealth) -> None:
        row = dataclasses.astuple(health)
        updates = ", ".join(
            f"{f.name} = excluded.{f.name}" for f in dataclasses.fields(PollerHealth)[1:]
        )
        with self._transaction("save poller health") as (conn, now):
            conn.execute(
                f"INSERT INTO poller_health ({_HEALTH_COLUMNS}, updated) "
                f"VALUES ({', '.join(['%s'] * len(row))}, %s) ON CONFLICT (poller) DO UPDATE "
                f"SET {updates}, updated = excluded.updated".encode(),
                (*row, now),
            )

    def health(self, poller: str | None = None) -> list[PollerHealth]:
        sql = f"SELECT {_HEALTH_COLUMNS} FROM poller_health"
        args: tuple[str, ...] = ()
        if poller is not None:
            sql += " WHERE poller = %s"
            args = (poller,)
        with self._guard("read poller health") as conn:
            rows = conn.execute((sql + " ORDER BY poller").encode(), args).fetchall()
        return [PollerHealth(*row) for row in rows]

    # ------------------------------------------------------------------ poll failures

    def record_poll_failure(self, failure: PollFailure) -> None:
        """Log a poll that could not run; keeps the newest KEEP_PER_POLLER per poller."""
        with self._transaction("record a poll failure") as (conn, _now):
            conn.execute(poll_failures.insert_sql("%s").encode(), failure.row())
            conn.execute(
                poll_failures.prune_sql("%s").encode(),
                (failure.poller, failure.poller, poll_failures.KEEP_PER_POLLER),
            )

    def poll_failures(
        self, flow: str | None = None, *, limit: int = 50, since: float | None = None
    ) -> list[PollFailure]:
        """The newest poll failures first, of one flow or of all."""
        sql, args = poll_failures.select_sql("%s", flow, since, limit)
        with self._guard("read poll failures") as conn:
            rows = conn.execute(sql.encode(), args).fetchall()
        return [PollFailure.from_row(tuple(row)) for row in rows]

    # ------------------------------------------------------------------ runtime nodes

    def register_node(self, name: str) -> None:
        """Announce node ``name`` (refused while a live process on another host or pid
        holds that name: two nodes of one name would be indistinguishable)."""
        with self._transaction("register the node") as (conn, now):
            row = conn.execute(
                "SELECT host, pid, heartbeat, stopped FROM nodes WHERE name = %s FOR UPDATE",
                (name,),
            ).fetchone()
            me = (socket.gethostname(), os.getpid())
            if row is not None and not row[3] and now - float(row[2]) < NODE_TTL:
                other = LockInfo(name, name, str(row[0]), int(row[1]), "", 0, 0, 0)
                if (str(row[0]), int(row[1])) != me and not dead_holder(other):
                    raise TenantError(
                        f"a runtime node named {name!r} is already running "
                        f"(pid {row[1]} on {row[0]})",
                        hint="give this one another --node NAME, or stop that one first",
                    )
            conn.execute(
                "INSERT INTO nodes (name, host, pid, started, heartbeat, stopped, status) "
                "VALUES (%s, %s, %s, %s, %s, false, '{}') ON CONFLICT (name) DO UPDATE SET "
                "host = excluded.host, pid = excluded.pid, started = excluded.started, "
                "heartbeat = excluded.heartbeat, stopped = false, status = '{}'",
                (name, *me, now, now),
            )

    def node_heartbeat(self, name: str, status: dict[str, Any], *, stopped: bool = False) -> None:
        with self._transaction("write the node status") as (conn, now):
            conn.execute(
                "UPDATE nodes SET heartbeat = %s, status = %s, stopped = %s WHERE name = %s",
                (now, json.dumps(status), stopped, name),
            )

    def nodes(self) -> list[NodeInfo]:
        with self._guard("read nodes") as conn:
            rows = conn.execute(
                "SELECT name, host, pid, started, heartbeat, stopped, status FROM nodes "
                "ORDER BY name"
            ).fetchall()
        return [
            NodeInfo(str(r[0]), str(r[1]), int(r[2]), r[3], r[4], bool(r[5]), json.loads(r[6]))
            for r in rows
        ]


NODE_TTL = 5.0
"""A node whose heartbeat is older than this is shown as gone."""


def _record(row: Sequence[Any]) -> MailRecord:
    values = list(row)
    values[8] = bool(values[8])
    return MailRecord(*values)
