"""The processes of a flow with ``workers N`` write the same SQLite files: a write waits for
another process's short transaction in steps of 100 µs instead of SQLite's first 1 ms sleep,
for a long one as long as the connection's timeout, as before, and the connection keeps its
busy timeout for everything else."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from flowrt import _sqlite
from flowrt.runtime.state import StateDB

pytestmark = pytest.mark.usefixtures("other_writers")

SCOPE = "imap:a@example.com/INBOX"


@pytest.fixture
def other_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "_other_writers", True)


def _write_while_another_writes(path: Path, holds: float) -> float:
    """Seconds a record took while another connection held the write lock ``holds`` s."""
    db = StateDB(path)
    held = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None, timeout=10)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(holds)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    started = time.monotonic()
    try:
        db.record_done(SCOPE, "uid:1:1", generation="1", message_id="<a@x>")
        waited = time.monotonic() - started
        assert db.records(SCOPE, ["uid:1:1"])["uid:1:1"].done
    finally:
        holder.join()
        db.close()
    return waited


def test_a_write_goes_through_right_after_another_writers_short_transaction(
    tmp_path: Path,
) -> None:
    assert _write_while_another_writes(tmp_path / "state.sqlite", 0.002) < 0.5


def test_a_long_transaction_is_waited_for_as_before(tmp_path: Path) -> None:
    waited = _write_while_another_writes(tmp_path / "state.sqlite", 0.3)  # past the quick tries
    assert 0.25 < waited < 5


def test_the_connection_keeps_its_busy_timeout(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.sqlite", timeout=7)
    db.record_done(SCOPE, "uid:1:1", generation="1", message_id="<a@x>")
    timeout = db._conn.execute("PRAGMA busy_timeout").fetchone()[0]
    db.close()
    assert timeout == 7000
