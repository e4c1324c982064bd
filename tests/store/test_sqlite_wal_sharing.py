"""A process that opens its SQLite database a second time (the runtime's notifier opens the
MPL beside the recorder) keeps what it writes visible to other processes: opening must not
drop the process's locks, or a reader closing in another process deletes the write-ahead log
under the writer, whose later commits then reach no one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flowrt.mpl.store import MplStore
from flowrt.runtime.state import StateDB

READ_MPL = """
import sys
from flowrt.mpl.store import MplStore
with MplStore(sys.argv[1], create=False) as store:
    print(store.get_setting("written") or "")
"""

READ_STATE = """
import sys
from flowrt.runtime.state import StateDB
db = StateDB(sys.argv[1], create=False)
print(",".join(db.replays("inbox")))
db.close()
"""


def _read(script: str, path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_the_mpl_stays_shared_when_the_writer_opens_it_again(tmp_path: Path) -> None:
    path = tmp_path / "mpl.sqlite"
    with MplStore(path) as writer:
        writer.set_setting("written", "first")
        MplStore(path, create=False).close()  # a second store in the writing process
        assert _read(READ_MPL, path) == "first"  # another process opens and closes
        writer.set_setting("written", "second")
        assert _read(READ_MPL, path) == "second"
        assert path.with_name("mpl.sqlite-wal").exists()
        writer.checkpoint()  # was "disk I/O error" once the log had been deleted


def test_the_state_db_stays_shared_when_the_writer_opens_it_again(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    writer = StateDB(path)
    try:
        writer.request_replay("inbox", "uid:1:1")
        StateDB(path, create=False).close()
        assert _read(READ_STATE, path) == "uid:1:1"
        writer.request_replay("inbox", "uid:1:2")
        assert set(_read(READ_STATE, path).split(",")) == {"uid:1:1", "uid:1:2"}
    finally:
        writer.close()
