"""How flowrt opens its SQLite files (the MPL, the runtime state): WAL, so that readers never
wait for the runtime's writes and a killed process leaves a readable file, with
``synchronous=NORMAL`` (durable at checkpoints, fast per commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from flowrt.errors import FlowrtError


def open_wal(
    path: Path,
    *,
    name: str,
    error: Callable[[str, sqlite3.Error | None], FlowrtError],
    create: bool,
    timeout: float,
) -> sqlite3.Connection:
    """An autocommit connection, shareable between threads (callers hold their own lock).

    ``create=False`` refuses a missing file. Failures become ``error(message, cause)``: the
    caller's own FlowrtError (with its hint for that sqlite3 error), naming the database.
    """
    if not create and not path.exists():
        raise error(f"no {name} at {path}", None)
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
    except sqlite3.Error as exc:
        raise error(f"cannot open the {name} {path}: {exc}", exc) from exc
    return conn
