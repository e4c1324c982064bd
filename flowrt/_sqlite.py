"""How flowrt opens its SQLite files (the MPL, the runtime state): WAL, so that readers never
wait for the runtime's writes and a killed process leaves a readable file, with
``synchronous=NORMAL`` (durable at checkpoints, fast per commit).

A file that is there is never silently replaced: only a missing or 0-byte file (with no
write-ahead log holding data) is initialised, and a 0-byte one is logged as such. A file
that is not an SQLite database, or an SQLite database without flowrt's schema that holds
tables, is an error naming the file and how to restore it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from flowrt.errors import FlowrtError

_log = structlog.get_logger("flowrt.store")
_MAGIC = b"SQLite format 3\x00"
FRESH_SECONDS = 2.0


def _restore_hint(path: Path, name: str) -> str:
    side = f"{path.name}-wal, {path.name}-shm"
    return (
        f"the file is damaged: stop the runtime, move {path} (and any {side}) away and "
        f"restore it from a backup; to start with an empty {name} instead, remove it and "
        "run again (what it held is lost)"
    )


def _settled(path: Path) -> bool:
    """Whether a file is older than a moment: an empty file that another process has just
    created (and is initialising) is not news; one that was emptied or made by hand is."""
    try:
        return time.time() - path.stat().st_mtime > FRESH_SECONDS
    except OSError:
        return False


def _wal_holds_data(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    try:
        return wal.stat().st_size > 0
    except OSError:
        return False


def _check_existing(
    path: Path, name: str, error: Callable[[str, sqlite3.Error | None], FlowrtError]
) -> bool:
    """Whether ``path`` is a 0-byte file to initialise; raises for an empty one whose WAL
    holds data.

    Only ``stat``, never an open: closing any descriptor of a file drops every POSIX lock
    this process holds on it, including the SHARED lock by which this process's SQLite
    connections say "in use". Another process closing its connection then believes itself
    the last one, deletes the WAL, and this process goes on writing into the deleted file
    (what it writes is lost to every reader; a new connection gets "disk I/O error")."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise error(f"cannot read the {name} {path}: {exc.strerror}", None) from exc
    if size:
        return False
    if _wal_holds_data(path):
        damaged = error(
            f"the {name} {path} is empty, but its write-ahead log {path.name}-wal holds "
            "data; not initialising it",
            None,
        )
        damaged.hint = _restore_hint(path, name)
        raise damaged
    return True


def _not_sqlite(path: Path) -> str | None:
    """What a file SQLite refused starts with, when that is not the SQLite header (read only
    once SQLite has refused it: see :func:`_check_existing` for why not before)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_MAGIC))
    except OSError:
        return None
    if not head or _MAGIC.startswith(head):  # SQLite's header, or what is written of it
        return None
    return "text" if head.isascii() and head.decode("ascii").isprintable() else "binary data"


def open_wal(
    path: Path,
    *,
    name: str,
    error: Callable[[str, sqlite3.Error | None], FlowrtError],
    create: bool,
    timeout: float,
    versioned: bool = False,
) -> sqlite3.Connection:
    """An autocommit connection, shareable between threads (callers hold their own lock).

    ``create=False`` refuses a missing file. Failures become ``error(message, cause)``: the
    caller's own FlowrtError (with its hint for that sqlite3 error), naming the database.
    ``versioned``: the caller's schema sets ``PRAGMA user_version``, so tables without it
    are not the caller's and the file is refused.
    """
    if not create and not path.exists():
        raise error(f"no {name} at {path}", None)
    empty = _check_existing(path, name, error) and _settled(path)  # before SQLite writes
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            # before WAL mode is set: that alone rewrites the header of a file not ours
            if versioned and int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
                require_own_schema(conn, path, name, error)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            found = _not_sqlite(path)
            damaged = error(
                f"the {name} {path} is damaged: "
                + (
                    f"SQLite says: {exc}"
                    if found is None
                    else f"not an SQLite database (it starts with {found}, not the SQLite header)"
                ),
                exc,
            )
            damaged.hint = _restore_hint(path, name)
            raise damaged from None  # the message says it all; no library name in the output
        raise error(f"cannot open the {name} {path}: {exc}", exc) from exc
    if empty:
        _log.warning(f"the {name} {path} was an empty (0-byte) file; initialised it")
    return conn


def require_own_schema(
    conn: sqlite3.Connection,
    path: Path,
    name: str,
    error: Callable[[str, sqlite3.Error | None], FlowrtError],
) -> None:
    """Before a first migration (user_version 0): refuse a database that holds tables, since
    they are not flowrt's (or the version number was lost) and migrating would mix them."""
    tables = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchone()[0]
    if tables:
        damaged = error(
            f"the {name} {path} holds {tables} table(s) but no flowrt schema version; not "
            "initialising it over them",
            None,
        )
        damaged.hint = _restore_hint(path, name)
        raise damaged


# SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ms ... before it tries a lock again.
# The processes of a flow with `workers N` write the same files in short transactions (some
# 50 µs each), so most of their waits are for a lock that is free again long before the first
# millisecond is over: measured with two workers on 5,000 mails, polling the first 4 ms in
# steps of 100 µs sends 7-10% more mails a second. One process alone never waits (and the two
# PRAGMAs a transaction would cost it 1-2%), so the quick way is taken only in a process that
# said it shares its files with other writers.
_QUICK_TRIES = 40
_QUICK_STEP = 0.0001
_other_writers = False


def expect_other_writers() -> None:
    """This process writes its tenant's SQLite files beside others (a flow's workers)."""
    global _other_writers
    _other_writers = True


def begin_immediate(conn: sqlite3.Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE`` (the write lock, now or after another writer's transaction).
    ``timeout``: the connection's busy timeout in seconds, given back after a quick try."""
    if not _other_writers:
        conn.execute("BEGIN IMMEDIATE")
        return
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        for _ in range(_QUICK_TRIES):
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            time.sleep(_QUICK_STEP)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    conn.execute("BEGIN IMMEDIATE")  # held longer: SQLite's handler waits, up to the timeout
