"""The MPL store: one SQLite database per tenant (``Tenant.mpl_path``).

Why SQLite in WAL mode with ``synchronous=NORMAL``: the runtime writes while ``flowrt mpl``
reads, and neither blocks the other; a commit costs no fsync (only checkpoints do), and a
process killed at any moment leaves a database that opens and reads, losing at most the last
transactions. Every failure of the database is raised as :class:`~flowrt.errors.MplError`.

One :class:`MplStore` owns one connection, which may be used from several threads (a
recorder's writer thread and its owner); a lock serialises them. Separate processes open
their own stores.

Checkpoints (copying what the WAL holds into the database file, the only step that waits for
the disk) are done by SQLite in whichever call commits when the WAL passes 1000 pages. A
recorder moves them off its writing calls: :meth:`MplStore.set_checkpointing` leaves them to
:meth:`MplStore.checkpoint`, which its timer thread calls on a second connection while the
engine's thread goes on (SQLite runs a passive checkpoint beside a writer).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flowrt._sqlite import begin_immediate, open_wal
from flowrt.errors import ChainLevel, MplError
from flowrt.mpl import _schema
from flowrt.mpl._time import format_duration, from_epoch, from_epoch_us, to_epoch
from flowrt.mpl.model import (
    ErrorInfo,
    LogLevel,
    LogLine,
    MplEntry,
    MplStatus,
    MplSummary,
    Run,
    Step,
    StepContent,
    StepStatus,
)

__all__ = ["DEFAULT_LIMIT", "DEFAULT_RETENTION", "MIN_PREFIX", "MplStore"]

DEFAULT_RETENTION = timedelta(days=30)
DEFAULT_LIMIT = 50
MIN_PREFIX = 8
"""Shortest message-ID prefix accepted where a full ID is expected."""

_RETENTION_KEY = "retention_seconds"
_UNFINISHED = (MplStatus.PROCESSING.value, MplStatus.RETRY.value)
ABANDONED_HINT = "the mail stayed in its mailbox and is processed again (a later entry)"


def abandoned_fields(reason: str, now: float | None = None) -> tuple[str, float, str, str, str]:
    """What an abandoned entry's row is set to, in either backend: (status, log end if it
    has none, error chain, error levels, hint)."""
    return (
        MplStatus.ABANDONED.value,
        time.time() if now is None else now,
        f"ABANDONED: {reason}",
        json.dumps([["ABANDONED", reason]]),
        ABANDONED_HINT,
    )


_SUMMARY_COLUMNS = (
    "id, message_id, correlation_id, application_id, flow, flow_version, status, "
    "log_start, log_end, simulation, failed_step, subject, mail_from, node"
)
_ENTRY_COLUMNS = ", ".join(_schema.ENTRY_COLUMNS)
_ID_MAX = "\U0010ffff"  # sorts after every character a message ID can hold
_CHUNK_SIZES = (256, 64, 16, 4, 1)
_DEFAULT_CHECKPOINT_PAGES = 1000  # SQLite's wal_autocheckpoint default
_BACKGROUND_SAFETY_PAGES = 10_000  # about 40 MB of WAL
# The nullable entry columns, read out of a row at once (C speed) to see which are None.
_NULLABLE = operator.itemgetter(
    *(i for i, col in enumerate(_schema.ENTRY_COLUMNS) if col in _schema.NULLABLE_COLUMNS)
)
_NULLABLE_SET = frozenset(_schema.NULLABLE_COLUMNS)


def _open_error(message: str, cause: sqlite3.Error | None) -> MplError:
    return MplError(message, hint=None if cause is None else _hint_for(cause))


class MplStore:
    """Open (and create or migrate) the MPL database at ``path``.

    ``create=False`` refuses a missing file instead of creating one, for commands that only
    read. ``timeout`` is how long to wait for another process's write lock.
    """

    def __init__(self, path: str | Path, *, create: bool = True, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = open_wal(
            self.path,
            name="MPL database",
            error=_open_error,
            create=create,
            timeout=timeout,
            versioned=True,
        )
        self._max_variables = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._sql: dict[tuple[str, str, int, str], str] = {}  # multi-row INSERT texts
        self._checkpointer: sqlite3.Connection | None = None  # see checkpoint()
        self._checkpoint_lock = threading.Lock()
        self._timeout = timeout
        try:
            with self._guard("open"):
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        # No `PRAGMA optimize` here: it may need the write lock, and a reader (`mpl list`)
        # would then wait for the runtime's writes. The query plans need no statistics.
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self._conn.close()

    def set_checkpointing(self, *, background: bool) -> None:
        """``background=True``: this store's writes leave checkpoints to :meth:`checkpoint`,
        called by another thread (a recorder's timer), and checkpoint themselves only as a
        safety net, once the WAL holds :data:`_BACKGROUND_SAFETY_PAGES` pages. ``False``: back
        to SQLite's default (the committing call checkpoints at 1000 pages)."""
        pages = _BACKGROUND_SAFETY_PAGES if background else _DEFAULT_CHECKPOINT_PAGES
        with self._guard("set checkpointing") as conn:
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")

    def checkpoint(self) -> None:
        """A passive checkpoint on a connection of its own: copies what it can of the WAL into
        the database file without waiting for readers or blocking the writer, so that the
        WAL is restarted by a later write instead of growing."""
        with self._checkpoint_lock:
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(
                        self.path,
                        timeout=self._timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                raise MplError(
                    f"MPL database {self.path}: checkpoint failed: {exc}", hint=_hint_for(exc)
                ) from exc

    def __enter__(self) -> MplStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock and turn any sqlite3 error into an MplError naming the database."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise MplError(
                    f"MPL database {self.path}: {action} failed: {exc}", hint=_hint_for(exc)
                ) from exc

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._guard(action) as conn:
            begin_immediate(conn, self._timeout)
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        version = self._user_version()
        if version == _schema.SCHEMA_VERSION:
            return
        if version > _schema.SCHEMA_VERSION:
            raise MplError(
                f"the MPL database {self.path} has schema version {version}; this flowrt "
                f"knows up to {_schema.SCHEMA_VERSION}",
                hint="use the flowrt version that wrote it, or a newer one",
            )
        with self._transaction("migrate") as conn:
            # Another process may have migrated while we waited for the write lock.
            for target in range(self._user_version(), _schema.SCHEMA_VERSION):
                for statement in _schema.MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target + 1}")

    def _user_version(self) -> int:
        value = self._conn.execute("PRAGMA user_version").fetchone()[0]
        return int(value)

    @property
    def schema_version(self) -> int:
        with self._guard("read schema version"):
            return self._user_version()

    # ------------------------------------------------------------------ writing

    def write_batch(
        self,
        entries: Sequence[Sequence[Any]],
        properties: Sequence[Sequence[Any]] = (),
        contents: Sequence[Sequence[Any]] = (),
    ) -> None:
        """Upsert entry rows (columns as :data:`_schema.ENTRY_COLUMNS`), add property rows
        ``(message_id, seq, name, value)`` and content rows ``(message_id, run, step, headers
        JSON, body, truncated, size)``, all in one transaction.

        This is the recorder's write path; an entry row written again replaces the earlier
        state of that message (it keeps its row id, which ``tail`` relies on).
        """
        with self._transaction("write") as conn:
            self._insert_entries(conn, entries)
            self._insert(conn, _schema.INSERT_PROPERTIES, _schema.PROPERTY_WIDTH, properties)
            self._insert(conn, _schema.INSERT_CONTENTS, _schema.CONTENT_WIDTH, contents)

    def _insert_entries(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Entry rows, with a NULL written into the SQL text for each nullable column that is
        None (binding a None parameter costs sqlite3 about three times what a short string
        does: it goes through the adapter lookup). Consecutive rows with the same columns None share
        statements; the order of the rows, and so of their new row ids, is kept."""
        start = 0
        count = len(rows)
        while start < count:
            shape = tuple(map(type, _NULLABLE(rows[start])))
            stop = start + 1
            while stop < count and tuple(map(type, _NULLABLE(rows[stop]))) == shape:
                stop += 1
            keep = _keep_mask(shape)
            group = "(" + ",".join("?" if k else "NULL" for k in keep) + ")"
            head, tail = _schema.INSERT_ENTRIES, _schema.UPSERT_ENTRIES_TAIL
            bound = None if all(keep) else keep
            self._insert(conn, head, sum(keep), rows[start:stop], tail, group, bound)
            start = stop

    def _insert(
        self,
        conn: sqlite3.Connection,
        head: str,
        width: int,
        rows: Sequence[Sequence[Any]],
        tail: str = "",
        group: str = "",
        keep: tuple[bool, ...] | None = None,
    ) -> None:
        """Multi-row inserts (see ``_schema`` for why) of ``width`` parameters a row. A batch
        is cut into statements of :data:`_CHUNK_SIZES` rows, largest first, so that the few
        SQL texts there are stay prepared in sqlite3's statement cache. ``keep`` says which
        values of a row are bound (the others are in ``group`` as literals)."""
        group = group or "(" + ",".join("?" * width) + ")"
        done = 0
        count = len(rows)
        for size in _CHUNK_SIZES:
            if size * width > self._max_variables and size > 1:
                continue
            if count - done < size:
                continue
            key = (head, group, size, tail)
            sql = self._sql.get(key)
            if sql is None:
                sql = self._sql[key] = head + ",".join([group] * size) + tail
            while count - done >= size:
                chunk = rows[done : done + size]
                if keep is None:
                    params = list(itertools.chain.from_iterable(chunk))
                else:
                    params = list(
                        itertools.chain.from_iterable(itertools.compress(r, keep) for r in chunk)
                    )
                conn.execute(sql, params)
                done += size

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
        """Entries matching every given filter, newest (by log start) first.

        ``message_id`` matches as a prefix (a full ID is its own prefix); ``properties``
        are ``(name, value)`` pairs that must all be present; ``since``/``until`` bound the
        log start (inclusive). ``limit=None`` means no limit. ``simulation`` True keeps only
        entries of `flowrt simulate`, False only real ones, None both.
        """
        where, args = _filters(flow, status, since, until, message_id, properties)
        if simulation is not None:
            where.append("simulation = ?")
            args.append(1 if simulation else 0)
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY log_start DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._guard("list") as conn:
            return [_summary(row) for row in conn.execute(sql, args)]

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
        """One page of :meth:`list_entries` (same filters and order) and the cursor of the
        next page (None on the last one).

        Keyset pagination: the cursor names the last entry shown (its log start and row id),
        and the next page starts below it through the same index the first page used, so a
        page deep in 10^6 entries costs what the first one does (an OFFSET would walk every
        row before it). ``text`` is a case-insensitive substring of the subject, the sender
        (From), the correlation or the application ID; it is not indexed, so alone it scans
        until a page is full.
        """
        where, args = _filters(flow, status, since, until, message_id, properties)
        if text:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in _TEXT_COLUMNS) + ")")
            args += [pattern] * len(_TEXT_COLUMNS)
        if after is not None:
            start, row_id = _parse_cursor(after)
            where.append("(log_start < ? OR (log_start = ? AND id < ?))")
            args += [start, start, row_id]
        sql = f"SELECT {_SUMMARY_COLUMNS}, log_start FROM entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY log_start DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        with self._guard("list") as conn:
            rows = conn.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = f"{rows[-1][-1]!r}:{rows[-1][0]}" if more else None
        return [_summary(row) for row in rows], cursor

    def counts(self) -> dict[tuple[str, str], int]:
        """How many entries each (flow, status) has; a full scan, for metrics."""
        with self._guard("count") as conn:
            rows = conn.execute(
                "SELECT flow, status, count(*) FROM entries GROUP BY flow, status"
            ).fetchall()
        return {(str(flow), str(status)): int(n) for flow, status, n in rows}

    # ------------------------------------------------------------------ one entry

    def find(self, message_id: str) -> MplEntry | None:
        """The entry with exactly this message ID, or None."""
        with self._guard("read entry") as conn:
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE message_id = ?", (message_id,)
            ).fetchone()
            return None if row is None else self._entry(conn, row)

    def get(self, id_or_prefix: str) -> MplEntry:
        """The entry with this message ID, or with the one ID starting with this prefix of at
        least :data:`MIN_PREFIX` characters; MplError if there is none or more than one."""
        return get_by_id_or_prefix(id_or_prefix, self.find, self._ids_with_prefix)

    def _ids_with_prefix(self, prefix: str) -> list[str]:
        with self._guard("read entry") as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT message_id FROM entries WHERE message_id >= ? AND message_id < ? "
                    "ORDER BY message_id LIMIT 3",
                    (prefix, prefix + _ID_MAX),
                )
            ]

    def _entry(self, conn: sqlite3.Connection, row: Sequence[Any]) -> MplEntry:
        message_id = row[0]
        props = conn.execute(
            "SELECT name, value FROM properties WHERE message_id = ? ORDER BY seq", (message_id,)
        ).fetchall()
        contents = conn.execute(
            "SELECT run, step, headers, body, truncated, size FROM contents WHERE message_id = ?",
            (message_id,),
        ).fetchall()
        return build_entry(row, props, contents)

    # ------------------------------------------------------------------ following (tail)

    def last_row_id(self) -> int:
        with self._guard("read") as conn:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])

    def settled_row_id(self, after: int) -> int:
        """The highest row id up to which every entry is visible for good (no later commit
        can add a lower id): here the last one, since SQLite commits one writer at a time
        and ids grow in commit order."""
        del after
        return self.last_row_id()

    def rows_after(
        self, row_id: int, *, flow: str | None = None, limit: int = 1000
    ) -> list[tuple[int, MplSummary]]:
        """Entries first written after row ``row_id``, oldest first, with their row ids."""
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM entries WHERE id > ?"
        args: list[Any] = [row_id]
        if flow is not None:
            sql += " AND flow = ?"
            args.append(flow)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._guard("read") as conn:
            return [(int(row[0]), _summary(row)) for row in conn.execute(sql, args)]

    def unfinished(self, *, flow: str | None = None) -> list[MplSummary]:
        """Entries still PROCESSING or in RETRY."""
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM entries WHERE status IN (?, ?)"
        args: list[Any] = list(_UNFINISHED)
        if flow is not None:
            sql += " AND flow = ?"
            args.append(flow)
        with self._guard("read") as conn:
            return [_summary(row) for row in conn.execute(sql, args)]

    def abandon_unfinished(
        self, reason: str, *, now: float | None = None, nodes: Sequence[str] | None = None
    ) -> int:
        """Close the entries a crashed runtime left PROCESSING or in RETRY as ABANDONED,
        with ``reason`` as their error; simulations are not the runtime's. ``nodes``: only
        the entries those runtime nodes wrote, and their worker processes (``NODE/...``).
        Returns how many."""
        where = "status IN (?, ?) AND simulation = 0"
        args: list[Any] = [*_UNFINISHED]
        if nodes is not None:
            if not nodes:
                return 0
            marks = ", ".join("?" * len(nodes))
            # a node name has no "/": what comes before one is the node of a worker process
            where += (
                f" AND (node IN ({marks}) OR (instr(node, '/') > 0"
                f" AND substr(node, 1, instr(node, '/') - 1) IN ({marks})))"
            )
            args += [*nodes, *nodes]
        with self._transaction("close abandoned entries") as conn:
            cursor = conn.execute(
                "UPDATE entries SET status = ?, log_end = coalesce(log_end, ?), "
                f"error_chain = ?, error_levels = ?, error_hint = ? WHERE {where}",
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
        """Messages that ended in their dead-letter place (ESCALATED, with the property
        ``dead-letter``), oldest first, with their row IDs (a watermark for followers).
        One replayed (``flowrt deadletter replay``) carries ``replayed`` and is left out
        unless ``include_replayed``."""
        sql = (
            "SELECT id, message_id FROM entries WHERE id > ? AND status = ? AND message_id IN "
            "(SELECT message_id FROM properties WHERE name = 'dead-letter')"
        )
        args: list[Any] = [after_row, MplStatus.ESCALATED.value]
        if not include_replayed:
            sql += (
                " AND message_id NOT IN (SELECT message_id FROM properties WHERE name = 'replayed')"
            )
        if flow is not None:
            sql += " AND flow = ?"
            args.append(flow)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._guard("list dead letters") as conn:
            rows = conn.execute(sql, args).fetchall()
        found: list[tuple[int, MplEntry]] = []
        for row_id, message_id in rows:
            entry = self.find(message_id)
            if entry is not None:
                found.append((int(row_id), entry))
        return found

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters not replayed, by flow."""
        sql = (
            "SELECT flow, count(*) FROM entries WHERE status = ? AND message_id IN "
            "(SELECT message_id FROM properties WHERE name = 'dead-letter') AND message_id "
            "NOT IN (SELECT message_id FROM properties WHERE name = 'replayed') GROUP BY flow"
        )
        with self._guard("count dead letters") as conn:
            rows = conn.execute(sql, (MplStatus.ESCALATED.value,)).fetchall()
        return {str(flow): int(n) for flow, n in rows}

    def add_property(self, message_id: str, name: str, value: str) -> None:
        """One more custom property on a stored entry (e.g. ``replayed``)."""
        with self._transaction("write a property") as conn:
            row = conn.execute(
                "SELECT coalesce(max(seq), -1) + 1 FROM properties WHERE message_id = ?",
                (message_id,),
            ).fetchone()
            conn.execute(
                "INSERT INTO properties (message_id, seq, name, value) VALUES (?, ?, ?, ?)",
                (message_id, int(row[0]) + 1000, name, value),
            )

    def summaries(self, message_ids: Iterable[str]) -> dict[str, MplSummary]:
        """The current summary of each of these messages that is still stored."""
        ids = list(message_ids)
        found: dict[str, MplSummary] = {}
        with self._guard("read") as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ", ".join("?" for _ in chunk)
                sql = f"SELECT {_SUMMARY_COLUMNS} FROM entries WHERE message_id IN ({marks})"
                for row in conn.execute(sql, chunk):
                    summary = _summary(row)
                    found[summary.message_id] = summary
        return found

    # ------------------------------------------------------------------ retention

    def purge(self, older_than: datetime, *, batch_size: int = 5000) -> int:
        """Delete entries that ended before ``older_than``, and entries that never ended
        (left behind by a killed process) that started before it. Deletes in batches of
        ``batch_size``, each its own short transaction so that recording can go on
        meanwhile. Returns how many entries were removed."""
        cutoff = to_epoch(older_than)
        removed = 0
        while True:
            with self._transaction("purge") as conn:
                rows = conn.execute(
                    "SELECT id, message_id FROM entries "
                    "WHERE log_start < ?1 AND (log_end < ?1 OR log_end IS NULL) LIMIT ?2",
                    (cutoff, batch_size),
                ).fetchall()
                ids = [(r[1],) for r in rows]
                conn.executemany("DELETE FROM properties WHERE message_id = ?", ids)
                conn.executemany("DELETE FROM contents WHERE message_id = ?", ids)
                conn.executemany("DELETE FROM entries WHERE id = ?", [(r[0],) for r in rows])
            removed += len(rows)
            if len(rows) < batch_size:
                return removed

    def count_purgeable(self, older_than: datetime) -> int:
        """How many entries :meth:`purge` would remove now (for ``--dry-run``)."""
        with self._guard("count") as conn:
            row = conn.execute(
                "SELECT count(*) FROM entries "
                "WHERE log_start < ?1 AND (log_end < ?1 OR log_end IS NULL)",
                (to_epoch(older_than),),
            ).fetchone()
        return int(row[0])

    def retention(self) -> timedelta:
        """How long entries are kept by :meth:`purge_expired` (default 30 days)."""
        stored = self.stored_retention()
        return DEFAULT_RETENTION if stored is None else stored

    def stored_retention(self) -> timedelta | None:
        """The retention that was set, or None while the default applies."""
        value = self.get_setting(_RETENTION_KEY)
        return None if value is None else timedelta(seconds=float(value))

    def set_retention(self, value: timedelta) -> None:
        if value.total_seconds() <= 0:
            raise MplError(f"retention must be positive, not {format_duration(value)}")
        self.set_setting(_RETENTION_KEY, repr(value.total_seconds()))

    def purge_expired(self, *, now: datetime | None = None) -> int:
        """Apply the retention setting: purge what ended longer ago than the retention.
        The runtime calls this periodically; ``flowrt mpl purge`` without
        ``--older-than`` calls it too."""
        moment = now if now is not None else datetime.now(UTC)
        return self.purge(moment - self.retention())

    def get_setting(self, name: str) -> str | None:
        with self._guard("read setting") as conn:
            row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        with self._transaction("write setting") as conn:
            conn.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def count(self) -> int:
        with self._guard("count") as conn:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])


def build_entry(
    row: Sequence[Any],
    properties: Iterable[Sequence[Any]],
    contents: Iterable[Sequence[Any]],
) -> MplEntry:
    """An entry from its row (columns as :data:`_schema.ENTRY_COLUMNS`), its property rows
    ``(name, value)`` in order and its content rows ``(run, step, headers, body, truncated,
    size)``: shared by both store backends."""
    values = dict(zip(_schema.ENTRY_COLUMNS, row, strict=True))
    message_id = values["message_id"]
    props: dict[str, list[str]] = {}
    for name, value in properties:
        props.setdefault(name, []).append(value)
    steps = {
        (run, step): StepContent(
            headers=tuple((str(n), str(v)) for n, v in json.loads(headers)),
            body=body,
            truncated=bool(truncated),
            size=size,
        )
        for run, step, headers, body, truncated, size in contents
    }
    error = None
    if values["error_chain"] is not None:
        error = ErrorInfo(
            chain=values["error_chain"],
            levels=tuple(
                ChainLevel(level=i, type=t, message=m)
                for i, (t, m) in enumerate(json.loads(values["error_levels"] or "[]"))
            ),
            hint=values["error_hint"],
            failed_step=values["failed_step"],
        )
    return MplEntry(
        message_id=message_id,
        correlation_id=values["correlation_id"],
        application_id=values["application_id"],
        flow=values["flow"],
        flow_version=values["flow_version"],
        sender=values["sender"],
        receivers=tuple(json.loads(values["receivers"])),
        status=MplStatus(values["status"]),
        log_start=from_epoch(values["log_start"]),
        log_end=None if values["log_end"] is None else from_epoch(values["log_end"]),
        log_level=LogLevel(values["log_level"]),
        simulation=bool(values["simulation"]),
        subject=values["subject"],
        mail_from=values["mail_from"],
        node=values["node"],
        custom_properties={k: tuple(v) for k, v in props.items()},
        error=error,
        filter_note=values["filter_note"],
        runs=tuple(_run(r, steps) for r in json.loads(values["runs"])),
        log=tuple(
            LogLine(time=from_epoch_us(t), level=lvl, text=text)
            for t, lvl, text in json.loads(values["log_lines"])
        ),
    )


def _hint_for(exc: sqlite3.Error) -> str | None:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "another process holds the MPL database's write lock; try again"
    if "not a database" in text or "malformed" in text:
        return "the file is damaged: move it away, and a new MPL database is created"
    if "full" in text:
        return "free disk space where the tenant lives"
    return None


def _filters(
    flow: str | None,
    status: MplStatus | str | None,
    since: datetime | None,
    until: datetime | None,
    message_id: str | None,
    properties: Iterable[tuple[str, str]],
) -> tuple[list[str], list[Any]]:
    """The WHERE terms and arguments of the list filters (see :meth:`MplStore.list_entries`)."""
    where: list[str] = []
    args: list[Any] = []
    if flow is not None:
        where.append("flow = ?")
        args.append(flow)
    if status is not None:
        where.append("status = ?")
        args.append(MplStatus(status).value)
    if since is not None:
        where.append("log_start >= ?")
        args.append(to_epoch(since))
    if until is not None:
        where.append("log_start <= ?")
        args.append(to_epoch(until))
    if message_id:
        where.append("message_id >= ? AND message_id < ?")
        args += [message_id, message_id + _ID_MAX]
    for name, value in properties:
        where.append(
            "message_id IN (SELECT message_id FROM properties WHERE name = ? AND value = ?)"
        )
        args += [name, value]
    return where, args


def get_by_id_or_prefix(
    id_or_prefix: str,
    find: Callable[[str], MplEntry | None],
    ids_with_prefix: Callable[[str], list[str]],
) -> MplEntry:
    """What ``get`` means on every MPL backend; only how a backend finds the entry and the
    (at most 3) IDs starting with a prefix differs."""
    entry = find(id_or_prefix)
    if entry is not None:
        return entry
    if len(id_or_prefix) < MIN_PREFIX:
        raise MplError(
            f"no MPL entry with message ID {id_or_prefix!r}",
            hint=f"give the full message ID or a prefix of at least {MIN_PREFIX} characters "
            "(see `flowrt mpl list`)",
        )
    ids = ids_with_prefix(id_or_prefix)
    if not ids:
        raise MplError(
            f"no MPL entry with message ID {id_or_prefix!r}",
            hint="see `flowrt mpl list` for the IDs that are stored",
        )
    if len(ids) > 1:
        shown = ", ".join(ids[:2]) + (", ..." if len(ids) > 2 else "")
        raise MplError(
            f"message ID prefix {id_or_prefix!r} matches more than one entry ({shown})",
            hint="give more characters of the message ID",
        )
    found = find(ids[0])
    if found is None:  # purged between the two reads
        raise MplError(f"no MPL entry with message ID {id_or_prefix!r}")
    return found


#: what the monitor's text filter searches
_TEXT_COLUMNS = ("subject", "mail_from", "correlation_id", "application_id")


def _parse_cursor(cursor: str) -> tuple[float, int]:
    """``LOG_START:ROW_ID`` as :meth:`MplStore.page` made it; MplError when it is not."""
    start, sep, row_id = cursor.rpartition(":")
    try:
        if not sep:
            raise ValueError(cursor)
        return float(start), int(row_id)
    except ValueError:
        raise MplError(
            f"{cursor!r} is not a page cursor",
            hint="use the next-page link or cursor that a list returned",
        ) from None


def _summary(row: Sequence[Any]) -> MplSummary:
    return MplSummary(
        message_id=row[1],
        correlation_id=row[2],
        application_id=row[3],
        flow=row[4],
        flow_version=row[5],
        status=MplStatus(row[6]),
        log_start=from_epoch(row[7]),
        log_end=None if row[8] is None else from_epoch(row[8]),
        simulation=bool(row[9]),
        failed_step=row[10],
        subject=row[11],
        mail_from=row[12],
        node=row[13],
    )


def _run(data: Sequence[Any], contents: dict[tuple[int, int], StepContent]) -> Run:
    """A run from its JSON form: ``[number, start µs, stop µs, status, steps]`` where a step is
    ``[step_id, model_step_id, branch, status, start offset µs from the run start, duration µs,
    error]``."""
    number, start, stop, status, steps = data
    return Run(
        number=number,
        start=from_epoch_us(start),
        stop=None if stop is None else from_epoch_us(stop),
        status=MplStatus(status),
        steps=tuple(
            Step(
                step_id=s[0],
                model_step_id=s[1],
                branch=s[2],
                status=StepStatus(s[3]),
                start=from_epoch_us(start + s[4]),
                stop=from_epoch_us(start + s[4] + s[5]),
                error=s[6],
                content=contents.get((number, i)),
            )
            for i, s in enumerate(steps)
        ),
    )


@functools.cache
def _keep_mask(shape: tuple[type, ...]) -> tuple[bool, ...]:
    """For the types of a row's nullable columns: which of all entry columns are bound
    (True) and which are written as NULL."""
    nulls = iter(kind is type(None) for kind in shape)
    return tuple(not next(nulls) if col in _NULLABLE_SET else True for col in _schema.ENTRY_COLUMNS)
