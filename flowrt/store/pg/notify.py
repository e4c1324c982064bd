"""The notification log on PostgreSQL: the methods of
:class:`~flowrt.notify.store.NotifyStore`, in the store every node shares.

Why here and not in each node's ``notify.sqlite``: one node at a time sends the alerts (the
notifier's lease), and another takes over when it dies. With a log per node the new sender
would start from its own watermark (alerting again what the old one sent, or skipping what
it had not read yet) and count each recipient's mails apart. Here a cycle's decisions (the
watermark, the messages watched, each ``seen`` claim and its attempts) commit in one
transaction (:meth:`claim`), and a due retry is taken with a row lock (:meth:`take_due`), so
even two senders at once (a paused node waking up) send an alert once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from flowrt.errors import TenantError
from flowrt.notify.store import (
    _COLUMNS,
    FAILED,
    HELD,
    PENDING,
    SENT,
    Attempt,
    Claim,
    Counter,
)
from flowrt.store.pg.connect import PgDatabase

__all__ = ["PgNotifyStore"]

_INSERT = (
    "INSERT INTO notify_attempts (created, updated, rule, trigger, event_key, recipient, "
    "status, subject, body, mpl_id, next_try) VALUES "
    f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}"
).encode()


class PgNotifyStore:
    """The notification log of a tenant whose store is PostgreSQL. ``db`` is owned."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.path = db.shown

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> PgNotifyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _guard(self, action: str) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        return self.db.guarded(
            f"notification log in {self.path}",
            action,
            hint="is PostgreSQL running and reachable? The notifier tries again",
            error=TenantError,
        )

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        with self._guard(action) as conn, conn.transaction():
            yield conn

    def _select(self, tail: str, args: Sequence[Any]) -> list[Attempt]:
        with self._guard("read attempts") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notify_attempts {tail}".encode(), args
            ).fetchall()
        return [Attempt(*row) for row in rows]

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
            row = conn.execute(
                _INSERT,
                (
                    *(now, now, rule, trigger, event_key, recipient, status, subject, body),
                    *(mpl_id, now if status == PENDING else None),
                ),
            ).fetchone()
        assert row is not None
        return Attempt(*row)

    def mark_sent(
        self, attempt_id: int, *, now: float, reply: str, digested: Sequence[int]
    ) -> None:
        with self._transaction("record a sent mail") as conn:
            conn.execute(
                "UPDATE notify_attempts SET status = %s, updated = %s, tries = tries + 1, "
                "next_try = NULL, reply = %s, chain = '', hint = '' WHERE id = %s",
                (SENT, now, reply, attempt_id),
            )
            if digested:
                conn.execute(
                    "UPDATE notify_attempts SET digested_in = %s WHERE id = ANY(%s)",
                    (attempt_id, list(digested)),
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
        status = FAILED if next_try is not None else "gave-up"
        with self._transaction("record a failed attempt") as conn:
            conn.execute(
                "UPDATE notify_attempts SET status = %s, updated = %s, tries = tries + %s, "
                "next_try = %s, chain = %s, hint = %s WHERE id = %s",
                (status, now, int(tried), next_try, chain, hint, attempt_id),
            )

    def mark_held(self, attempt_id: int, *, now: float) -> None:
        with self._transaction("record a held alert") as conn:
            conn.execute(
                "UPDATE notify_attempts SET status = %s, updated = %s, next_try = NULL "
                "WHERE id = %s",
                (HELD, now, attempt_id),
            )

    def due(self, now: float) -> list[Attempt]:
        return self._select(
            "WHERE status IN (%s, %s) AND next_try <= %s ORDER BY id", (FAILED, PENDING, now)
        )

    def take_due(self, now: float, *, hold: float) -> list[Attempt]:
        """As :meth:`NotifyStore.take_due`; rows another sender is taking are skipped."""
        with self._transaction("take due attempts") as conn:
            rows = conn.execute(
                f"UPDATE notify_attempts SET next_try = %s WHERE id IN (SELECT id FROM "
                "notify_attempts WHERE status IN (%s, %s) AND next_try <= %s "
                f"FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}".encode(),
                (now + hold, FAILED, PENDING, now),
            ).fetchall()
        return sorted((Attempt(*row) for row in rows), key=lambda a: a.id)

    def held(self, recipient: str) -> list[Attempt]:
        return self._select(
            "WHERE recipient = %s AND status = %s AND digested_in IS NULL ORDER BY id",
            (recipient, HELD),
        )

    def get(self, attempt_id: int) -> Attempt | None:
        found = self._select("WHERE id = %s", (attempt_id,))
        return found[0] if found else None

    def attempts(
        self, *, recipient: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Attempt]:
        where: list[str] = []
        args: list[Any] = []
        if recipient is not None:
            where.append("recipient = %s")
            args.append(recipient)
        if status is not None:
            where.append("status = %s")
            args.append(status)
        sql = ("WHERE " + " AND ".join(where) + " " if where else "") + "ORDER BY id DESC LIMIT %s"
        return self._select(sql, (*args, limit))

    # ------------------------------------------------------------------ one cycle's decisions

    def claim(self, claim: Claim, *, now: float, hold: float) -> list[Attempt]:
        """As :meth:`NotifyStore.claim`: a ``seen`` key is claimed by one transaction only
        (its primary key), so of two senders at once one records the alert."""
        created: list[Attempt] = []
        with self._transaction("record the alerts of a cycle") as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO notify_marks (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                list(claim.marks.items()),
            )
            if claim.watch:
                cur.execute(
                    "INSERT INTO notify_watch (message_id) SELECT unnest(%s::text[]) "
                    "ON CONFLICT DO NOTHING",
                    (sorted(claim.watch),),
                )
            if claim.unwatch:
                cur.execute(
                    "DELETE FROM notify_watch WHERE message_id = ANY(%s)", (sorted(claim.unwatch),)
                )
            for key, attempts in claim.alerts:
                cur.execute(
                    "INSERT INTO notify_seen (key, at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (key, now),
                )
                if cur.rowcount != 1:
                    continue
                for a in attempts:
                    cur.execute(
                        _INSERT,
                        (
                            *(now, now, a.rule, a.trigger, a.event_key, a.recipient, PENDING),
                            *(a.subject, a.body, a.mpl_id, now + hold),
                        ),
                    )
                    row = cur.fetchone()
                    assert row is not None
                    created.append(Attempt(*row))
        return created

    def watched(self) -> set[str]:
        with self._guard("read watched messages") as conn:
            return {str(r[0]) for r in conn.execute("SELECT message_id FROM notify_watch")}

    # ------------------------------------------------------------------ counters

    def sent_in_window(self, recipient: str, *, now: float, window: float) -> int:
        with self._guard("count sent mails") as conn:
            row = conn.execute(
                "SELECT count(*) FROM notify_attempts WHERE recipient = %s AND status = %s "
                "AND updated > greatest(%s, coalesce((SELECT at FROM notify_resets "
                "WHERE recipient = %s), 0))",
                (recipient, SENT, now - window, recipient),
            ).fetchone()
        return int(row[0]) if row else 0

    def counters(self, *, now: float, window: float) -> list[Counter]:
        with self._guard("read counters") as conn:
            rows = conn.execute(
                "SELECT a.recipient, "
                "count(*) FILTER (WHERE a.status = %s AND a.updated > greatest(%s, "
                "coalesce(r.at, 0))), "
                "count(*) FILTER (WHERE a.status = %s AND a.digested_in IS NULL), "
                "max(a.updated) FILTER (WHERE a.status = %s), r.at "
                "FROM notify_attempts a LEFT JOIN notify_resets r USING (recipient) "
                "WHERE a.recipient <> '' GROUP BY a.recipient, r.at ORDER BY a.recipient",
                (SENT, now - window, HELD, SENT),
            ).fetchall()
        return [
            Counter(
                recipient=str(r[0]),
                sent=int(r[1]),
                held=int(r[2]),
                last_sent=None if r[3] is None else float(r[3]),
                reset_at=None if r[4] is None else float(r[4]),
            )
            for r in rows
        ]

    def reset(self, recipient: str, *, now: float) -> bool:
        with self._transaction("reset a counter") as conn:
            known = conn.execute(
                "SELECT 1 FROM notify_attempts WHERE recipient = %s LIMIT 1", (recipient,)
            ).fetchone()
            if known is None:
                return False
            conn.execute(
                "INSERT INTO notify_resets (recipient, at) VALUES (%s, %s) "
                "ON CONFLICT (recipient) DO UPDATE SET at = excluded.at",
                (recipient, now),
            )
        return True

    def purge(self, before: float) -> int:
        with self._transaction("purge") as conn:
            removed = conn.execute(
                "DELETE FROM notify_attempts WHERE updated < %s AND NOT (status = %s AND "
                "digested_in IS NULL) AND status NOT IN (%s, %s)",
                (before, HELD, FAILED, PENDING),
            ).rowcount
            conn.execute("DELETE FROM notify_seen WHERE at < %s", (before,))
        return int(removed)

    # ------------------------------------------------------------------ what was seen

    def first_time(self, key: str, *, now: float) -> bool:
        with self._guard("remember an event") as conn:
            cursor = conn.execute(
                "INSERT INTO notify_seen (key, at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (key, now),
            )
            return cursor.rowcount == 1

    def mark(self, name: str) -> str | None:
        with self._guard("read a mark") as conn:
            row = conn.execute("SELECT value FROM notify_marks WHERE name = %s", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_mark(self, name: str, value: str) -> None:
        with self._guard("write a mark") as conn:
            conn.execute(
                "INSERT INTO notify_marks (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
