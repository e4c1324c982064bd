"""A process killed while it writes the MPL leaves a database that opens and reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from flowrt.mpl import MplStatus, MplStore

WRITER = textwrap.dedent(
    """
    import sys, time
    from flowrt.mpl import LogLevel, MplRecorder, MplStore, StepStatus, new_message_id

    store = MplStore(sys.argv[1])
    rec = MplRecorder(store, level=LogLevel.TRACE, batch_size=200, flush_interval=0.01)
    body = "x" * 4000
    while True:  # until killed
        entry = rec.begin(new_message_id(), "c", "crash-flow", "1", "sender", ["receiver"])
        entry.custom_property("n", "1")
        run = entry.start_run()
        t = time.time()
        for i in range(5):
            run.step(f"step{i}", str(i), "", StepStatus.COMPLETED, t, t, content=({}, body))
        entry.complete()
    """
)


def test_sigkill_mid_write_leaves_a_readable_database(tmp_path: Path) -> None:
    path = tmp_path / "mpl.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
    try:
        deadline = time.monotonic() + 30
        seen = 0
        while seen < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
            if path.exists():
                with MplStore(path) as reader:
                    seen = reader.count()
        assert seen >= 2000, "the writer did not get going"
        time.sleep(0.1)  # more writes in flight
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    with MplStore(path) as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.count() >= seen
        newest = store.list_entries(flow="crash-flow", limit=20)
        assert len(newest) == 20
        for summary in newest:
            entry = store.get(summary.message_id)
            if entry.status is MplStatus.COMPLETED:  # written with everything, atomically
                assert len(entry.runs[0].steps) == 5
                assert all(step.content is not None for step in entry.runs[0].steps)
                assert entry.custom_properties == {"n": ("1",)}
            else:  # written when it began, killed before the next flush
                assert entry.status is MplStatus.PROCESSING
