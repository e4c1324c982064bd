"""The MPL on PostgreSQL: the same methods, queries and filters as the SQLite
:class:`~flowrt.mpl.store.MplStore`, for several nodes writing at once.

Writes are ``executemany`` upserts, which psycopg sends in pipeline mode (one round trip per
batch, not per row). Retention purges in batches of short transactions that take only rows
no writer holds (``SKIP LOCKED``), so recording never waits for a purge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from flowrt.errors import MplError
from flowrt.mpl import _schema
from flowrt.mpl._time import format_duration, to_epoch
from flowrt.mpl.model import MplEntry, MplStatus, MplSummary
from flowrt.mpl.store import _TEXT_COLUMNS as TEXT_COLUMNS
from flowrt.mpl.store import (
    DEFAULT_LIMIT,
    DEFAULT_RETENTION,
    abandoned_fields,
    build_entry,
    get_by_id_or_prefix,
)
from flowrt.mpl.store import _filters as sqlite_filters
from flowrt.mpl.store import _parse_cursor as parse_cursor
from flowrt.mpl.store import _summary as summary_of
from flowrt.store.pg.connect import PgDatabase

__all__ = ["PgMplStore"]

_ID_MAX = "\U0010ffff"
SETTLE = 10.0
"""Seconds an MPL write transaction takes at most (a recorder batch is ~0.1 s): rows first
written longer ago than this are settled (see :meth:`PgMplStore.settled_row_id`)."""
_RETENTION_KEY = "retention_seconds"
_UNFINISHED = [MplStatus.PROCESSING.value, MplStatus.RETRY.value]
_SUMMARY_COLUMNS = (
    "id, message_id, correlation_id, application_id, flow, flow_version, status, "
    "log_start, log_end, simulation, failed_step, subject, mail_from, node"
)
_ENTRY_COLUMNS = ", ".join(_schema.ENTRY_COLUMNS)
_UPSERT = (
    f"INSERT INTO mpl_entries ({_ENTRY_COLUMNS}) VALUES "
    f"({', '.join(['%s'] * len(_schema.ENTRY_COLUMNS))}) ON CONFLICT (message_id) DO UPDATE SET "
    + ", ".join(f"{col} = excluded.{col}" for col in _schema.ENTRY_COLUMNS[1:])
)
_PROPERTY = (
    "INSERT INTO mpl_properties (message_id, seq, name, value) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (message_id, seq) DO UPDATE SET name = excluded.name, value = excluded.value"
)
_CONTENT = (
    "INSERT INTO mpl_contents (message_id, run, step, headers, body, truncated, size) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (message_id, run, step) DO UPDATE SET "
    "headers = excluded.headers, body = excluded.body, truncated = excluded.truncated, "
    "size = excluded.size"
)


class PgMplStore:
    """The MPL of a tenant whose store is PostgreSQL. ``db`` is owned (closed with us)."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.path = db.shown  # what messages name as the MPL's place

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self.db.close()

    def set_checkpointing(self, *, background: bool) -> None:
        """Nothing to do: PostgreSQL checkpoints by itself."""

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints by itself."""

    def __enter__(self) -> PgMplStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _guard(self, action: str) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        # a pool that gives no connection raises an MplError too: the recorder retries those
        return self.db.guarded(
            f"MPL database {self.path}",
            action,
            hint="is PostgreSQL running and reachable? Recording goes on once it is back",
            error=MplError,
        )

    @property
    def schema_version(self) -> int:
        with self._guard("read schema version") as conn:
            row = conn.execute(
                "SELECT value FROM flowrt_meta WHERE name = 'schema_version'"
            ).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ writing

    def write_batch(
        self,
        entries: Sequence[Sequence[Any]],
        properties: Sequence[Sequence[Any]] = (),
        contents: Sequence[Sequence[Any]] = (),
    ) -> None:
        """Upsert entry rows, property rows and content rows in one transaction."""
        with self._guard("write") as conn, conn.transaction(), conn.cursor() as cur:
            if entries:
                cur.executemany(_UPSERT, entries)
            if properties:
                cur.executemany(_PROPERTY, properties)
            if contents:
                cur.executemany(_CONTENT, contents)

    # ------------------------------------------------------------------ listing

    def list_entries(
        self,
        *,
        flow: str | None = None,
        status: MplStatus | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        message_id: str | None = None,
        properties: Iterable[tuple[str, str]] = (),
        limit: int | None = DEFAULT_LIMIT,
        simulation: bool | None = None,
    ) -> list[MplSummary]:
        where, args = _filters(flow, status, since, until, message_id, properties)
        if simulation is not None:
            where.append("simulation = %s")
            args.append(1 if simulation else 0)
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM mpl_entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY log_start DESC, id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        with self._guard("list") as conn:
            return [summary_of(row) for row in conn.execute(sql.encode(), args)]

    def page(
        self,
        *,
        flow: str | None = None,
        status: MplStatus | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        message_id: str | None = None,
        properties: Iterable[tuple[str, str]] = (),
        text: str | None = None,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> tuple[list[MplSummary], str | None]:
        """As :meth:`MplStore.page`: keyset pages, the cursor names the last entry shown."""
        where, args = _filters(flow, status, since, until, message_id, properties)
        if text:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(" + " OR ".join(f"{c} ILIKE %s" for c in TEXT_COLUMNS) + ")")
            args += [pattern] * len(TEXT_COLUMNS)
        if after is not None:
            start, row_id = parse_cursor(after)
            where.append("(log_start < %s OR (log_start = %s AND id < %s))")
            args += [start, start, row_id]
        sql = f"SELECT {_SUMMARY_COLUMNS}, log_start FROM mpl_entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY log_start DESC, id DESC LIMIT %s"
        args.append(limit + 1)
        with self._guard("list") as conn:
            rows = conn.execute(sql.encode(), args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = f"{rows[-1][-1]!r}:{rows[-1][0]}" if more else None
        return [summary_of(row) for row in rows], cursor

    def counts(self) -> dict[tuple[str, str], int]:
        """How many entries each (flow, status) has, for metrics."""
        with self._guard("count") as conn:
            rows = conn.execute(
                "SELECT flow, status, count(*) FROM mpl_entries GROUP BY flow, status"
            ).fetchall()
        return {(str(flow), str(status)): int(n) for flow, status, n in rows}

    # ------------------------------------------------------------------ one entry

    def find(self, message_id: str) -> MplEntry | None:
        with self._guard("read entry") as conn:
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM mpl_entries WHERE message_id = %s".encode(),
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            props = conn.execute(
                "SELECT name, value FROM mpl_properties WHERE message_id = %s ORDER BY seq",
                (message_id,),
            ).fetchall()
            contents = conn.execute(
                "SELECT run, step, headers, body, truncated, size FROM mpl_contents "
                "WHERE message_id = %s",
                (message_id,),
            ).fetchall()
        return build_entry(row, props, contents)

    def get(self, id_or_prefix: str) -> MplEntry:
        return get_by_id_or_prefix(id_or_prefix, self.find, self._ids_with_prefix)

    def _ids_with_prefix(self, prefix: str) -> list[str]:
        with self._guard("read entry") as conn:
            return [
                str(r[0])
                for r in conn.execute(
                    "SELECT message_id FROM mpl_entries WHERE message_id >= %s AND "
                    "message_id < %s ORDER BY message_id LIMIT 3",
                    (prefix, prefix + _ID_MAX),
                )
            ]

    # ------------------------------------------------------------------ following (tail)

    def last_row_id(self) -> int:
        with self._guard("read") as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM mpl_entries").fetchone()
        return int(row[0]) if row else 0

    def settled_row_id(self, after: int) -> int:
        """As :meth:`MplStore.settled_row_id`. Several nodes insert at once, and a row's
        id is taken when it is inserted, not when its transaction commits: a row with a
        lower id can become visible later. A row first written :data:`SETTLE` seconds ago
        (``written``, the database's clock) had every lower id's transaction started
        before it, and those have ended since; the highest such id after ``after`` is the
        bound (or ``after``)."""
        with self._guard("read") as conn:
            row = conn.execute(
                "SELECT max(id) FROM mpl_entries WHERE id > %s AND "
                "written < extract(epoch from clock_timestamp()) - %s",
                (after, SETTLE),
            ).fetchone()
        return after if row is None or row[0] is None else int(row[0])

    def rows_after(
        self, row_id: int, *, flow: str | None = None, limit: int = 1000
    ) -> list[tuple[int, MplSummary]]:
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM mpl_entries WHERE id > %s"
        args: list[Any] = [row_id]
        if flow is not None:
            sql += " AND flow = %s"
            args.append(flow)
        sql += " ORDER BY id LIMIT %s"
        args.append(limit)
        with self._guard("read") as conn:
            return [(int(row[0]), summary_of(row)) for row in conn.execute(sql.encode(), args)]

    def unfinished(self, *, flow: str | None = None) -> list[MplSummary]:
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM mpl_entries WHERE status = ANY(%s)"
        args: list[Any] = [_UNFINISHED]
        if flow is not None:
            sql += " AND flow = %s"
            args.append(flow)
        with self._guard("read") as conn:
            return [summary_of(row) for row in conn.execute(sql.encode(), args)]

    def summaries(self, message_ids: Iterable[str]) -> dict[str, MplSummary]:
        ids = list(message_ids)
        found: dict[str, MplSummary] = {}
        with self._guard("read") as conn:
            for i in range(0, len(ids), 1000):
                rows = conn.execute(
                    f"SELECT {_SUMMARY_COLUMNS} FROM mpl_entries "
                    "WHERE message_id = ANY(%s)".encode(),
                    (ids[i : i + 1000],),
                )
                for row in rows:
                    summary = summary_of(row)
                    found[summary.message_id] = summary
        return found

    # ------------------------------------------------------------------ endings

    def abandon_unfinished(
        self, reason: str, *, now: float | None = None, nodes: Sequence[str] | None = None
    ) -> int:
        """As :meth:`MplStore.abandon_unfinished`. With several nodes, what is unfinished
        may be another node's mail in hand: a node passes ``nodes``, the ones it knows are
        gone (itself at start), and only their entries are closed."""
        where = "status = ANY(%s) AND simulation = 0"
        args: list[Any] = [_UNFINISHED]
        if nodes is not None:
            if not nodes:
                return 0
            # and their worker processes' (NODE/...: a node name has no "/")
            where += " AND (node = ANY(%s) OR split_part(node, '/', 1) = ANY(%s))"
            args += [list(nodes), list(nodes)]
        with self._guard("close abandoned entries") as conn:
            cursor = conn.execute(
                "UPDATE mpl_entries SET status = %s, log_end = coalesce(log_end, %s), "
                f"error_chain = %s, error_levels = %s, error_hint = %s WHERE {where}".encode(),
                (*abandoned_fields(reason, now), *args),
            )
            return cursor.rowcount

    def dead_letters(
        self,
        *,
        flow: str | None = None,
        after_row: int = 0,
        include_replayed: bool = False,
        limit: int | None = None,
    ) -> list[tuple[int, MplEntry]]:
        """As :meth:`MplStore.dead_letters`."""
        sql = (
            "SELECT id, message_id FROM mpl_entries WHERE id > %s AND status = %s AND "
            "message_id IN (SELECT message_id FROM mpl_properties WHERE name = 'dead-letter')"
        )
        args: list[Any] = [after_row, MplStatus.ESCALATED.value]
        if not include_replayed:
            sql += (
                " AND message_id NOT IN "
                "(SELECT message_id FROM mpl_properties WHERE name = 'replayed')"
            )
        if flow is not None:
            sql += " AND flow = %s"
            args.append(flow)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        with self._guard("list dead letters") as conn:
            rows = conn.execute(sql.encode(), args).fetchall()
        found: list[tuple[int, MplEntry]] = []
        for row_id, message_id in rows:
            entry = self.find(message_id)
            if entry is not None:
                found.append((int(row_id), entry))
        return found

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters not replayed, by flow."""
        with self._guard("count dead letters") as conn:
            rows = conn.execute(
                "SELECT flow, count(*) FROM mpl_entries WHERE status = %s AND message_id IN "
                "(SELECT message_id FROM mpl_properties WHERE name = 'dead-letter') AND "
                "message_id NOT IN (SELECT message_id FROM mpl_properties WHERE name = "
                "'replayed') GROUP BY flow",
                (MplStatus.ESCALATED.value,),
            ).fetchall()
        return {str(flow): int(n) for flow, n in rows}

    def add_property(self, message_id: str, name: str, value: str) -> None:
        """One more custom property on a stored entry (e.g. ``replayed``)."""
        with self._guard("write a property") as conn, conn.transaction():
            row = conn.execute(
                "SELECT coalesce(max(seq), -1) + 1 FROM mpl_properties WHERE message_id = %s",
                (message_id,),
            ).fetchone()
            conn.execute(
                "INSERT INTO mpl_properties (message_id, seq, name, value) VALUES (%s, %s, %s, %s)",
                (message_id, int(row[0] if row else 0) + 1000, name, value),
            )

    # ------------------------------------------------------------------ retention

    def purge(self, older_than: datetime, *, batch_size: int = 5000) -> int:
        """Delete what ended (or started, never ending) before ``older_than``, ``batch_size``
        entries per transaction; rows a writer holds are left for the next purge."""
        cutoff = to_epoch(older_than)
        removed = 0
        while True:
            with self._guard("purge") as conn, conn.transaction():
                ids = [
                    str(r[0])
                    for r in conn.execute(
                        "DELETE FROM mpl_entries WHERE id IN (SELECT id FROM mpl_entries "
                        "WHERE log_start < %(c)s AND (log_end < %(c)s OR log_end IS NULL) "
                        "LIMIT %(n)s FOR UPDATE SKIP LOCKED) RETURNING message_id",
                        {"c": cutoff, "n": batch_size},
                    )
                ]
                if ids:
                    conn.execute("DELETE FROM mpl_properties WHERE message_id = ANY(%s)", (ids,))
                    conn.execute("DELETE FROM mpl_contents WHERE message_id = ANY(%s)", (ids,))
            removed += len(ids)
            if len(ids) < batch_size:
                return removed

    def count_purgeable(self, older_than: datetime) -> int:
        """How many entries :meth:`purge` would remove now (for ``--dry-run``)."""
        cutoff = to_epoch(older_than)
        with self._guard("count") as conn:
            row = conn.execute(
                "SELECT count(*) FROM mpl_entries "
                "WHERE log_start < %(c)s AND (log_end < %(c)s OR log_end IS NULL)",
                {"c": cutoff},
            ).fetchone()
        return int(row[0]) if row else 0

    def retention(self) -> timedelta:
        stored = self.stored_retention()
        return DEFAULT_RETENTION if stored is None else stored

    def stored_retention(self) -> timedelta | None:
        value = self.get_setting(_RETENTION_KEY)
        return None if value is None else timedelta(seconds=float(value))

    def set_retention(self, value: timedelta) -> None:
        if value.total_seconds() <= 0:
            raise MplError(f"retention must be positive, not {format_duration(value)}")
        self.set_setting(_RETENTION_KEY, repr(value.total_seconds()))

    def purge_expired(self, *, now: datetime | None = None) -> int:
        moment = now if now is not None else datetime.now(UTC)
        return self.purge(moment - self.retention())

    def get_setting(self, name: str) -> str | None:
        with self._guard("read setting") as conn:
            row = conn.execute("SELECT value FROM mpl_settings WHERE name = %s", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        with self._guard("write setting") as conn:
            conn.execute(
                "INSERT INTO mpl_settings (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def count(self) -> int:
        with self._guard("count") as conn:
            row = conn.execute("SELECT count(*) FROM mpl_entries").fetchone()
        return int(row[0]) if row else 0


def _filters(
    flow: str | None,
    status: MplStatus | str | None,
    since: datetime | None,
    until: datetime | None,
    message_id: str | None,
    properties: Iterable[tuple[str, str]],
) -> tuple[list[str], list[Any]]:
    """The SQLite store's list filters (one definition of what they mean), in this
    database's placeholders and table names."""
    where, args = sqlite_filters(flow, status, since, until, message_id, properties)
    terms = [t.replace("?", "%s").replace("FROM properties", "FROM mpl_properties") for t in where]
    return terms, args
