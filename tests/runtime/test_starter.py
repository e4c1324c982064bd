"""The starter that forks workers (``runtime/starter.py``), where it misbehaves: a request
it answers too late must not answer the next one, and what it forks late is not left
running or unreaped. (The workers' behaviour with a healthy starter: test_workers.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a runtime's side, in a process of its own (the starter is forked from it)
SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from flowrt.runtime import starter
    from flowrt.runtime.workers import WorkerArgs
    from flowrt.source_state import Partition

    starter.REPLY_WAIT = 0.5
    starter.LATE_REPLY_WAIT = 5.0
    forks = starter.WorkerStarter.fork()
    args = WorkerArgs(Path(sys.argv[1]), "f", 1, Partition(1, 2), 1.0, None, True).args()

    async def ask(tag):
        try:
            worker = await forks.start(args)
            print(tag, "pid", worker.pid, flush=True)
        except starter.StarterGone as exc:
            print(tag, "gone:", exc, flush=True)

    def children():
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == os.getpid() and entry.name != str(forks.pid):
                    found.append((entry.name, stat[0]))
        return found

    async def main():
        os.kill(forks.pid, signal.SIGSTOP)  # it cannot answer
        asyncio.get_running_loop().call_later(0.8, os.kill, forks.pid, signal.SIGCONT)
        await asyncio.gather(ask("A"), ask("B"))  # B waits for A's reply, then asks
        await asyncio.sleep(2.5)  # A's worker is forked late, after the SIGCONT
        print("children", children(), flush=True)

    asyncio.run(main())
    forks.close()
    """
)


def test_a_starter_that_answers_too_late_is_given_up_and_leaves_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "tenant")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "A gone: the starter did not answer" in lines
    assert "B gone: the starter is gone" in lines  # not A's late reply
    assert "children []" in lines  # the worker forked late was killed and reaped
    assert "Traceback" not in done.stderr
