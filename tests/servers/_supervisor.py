"""A tiny init for one server process tree (stdlib only; run as a script, not imported).

Usage::

    python _supervisor.py [--pidfile PATH] [--grace SECONDS] [--orphan-cleanup DIR]
                          -- COMMAND [ARG...]

Why it exists:

* It is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): daemons that fork away from
  COMMAND (``postfix start``) and the children a server leaves behind when it stops are
  re-parented here and reaped. Without it they become zombies of PID 1, which on some CI
  machines and micro-VMs never reaps them.
* It ties the server's life to the process that started it: the parent keeps the write end
  of this process's stdin. A ``stop`` line, EOF on stdin (the parent exited or was killed,
  even with SIGKILL), SIGTERM, SIGINT or SIGHUP all stop the server: SIGTERM to the main
  process (the pid in ``--pidfile`` if given, else COMMAND), then after ``--grace`` seconds
  SIGKILL to every remaining descendant.

The supervisor exits when it has no children left, with COMMAND's exit status when COMMAND
failed (so a server that cannot start is visible to the parent), otherwise 0. When it was
orphaned (stdin EOF without a ``stop`` line: nobody is left to clean up), it also deletes the
``--orphan-cleanup`` directory (the server's private temporary directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        pass


def _ppid_map() -> dict[int, int]:
    result: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses.
        rest = data[data.rfind(b")") + 2 :].split()
        if len(rest) >= 2:
            result[int(name)] = int(rest[1])
    return result


def _descendants(root: int) -> list[int]:
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Supervisor:
    def __init__(
        self, argv: list[str], pidfile: str | None, grace: float, orphan_cleanup: str | None
    ) -> None:
        self.argv = argv
        self.pidfile = pidfile
        self.grace = grace
        self.orphan_cleanup = orphan_cleanup
        self.orphaned = False
        self.stopping = threading.Event()
        self.child_pid = 0
        self.child_status: int | None = None

    def main_pid(self) -> int:
        if self.pidfile:
            try:
                with open(self.pidfile) as f:
                    pid = int(f.read().split()[0])
                if pid > 0:
                    return pid
            except (OSError, ValueError, IndexError):
                pass
        return self.child_pid

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        pid = self.main_pid()
        # Only ever signal our own descendants (a stale pid file may name a reused pid).
        if pid and pid in _descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, daemon=True).start()

    def _kill_after_grace(self) -> None:
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            if not _descendants(os.getpid()):
                return
            time.sleep(0.05)
        for pid in _descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _watch_stdin(self) -> None:
        told = False
        try:
            for line in sys.stdin:
                if line.strip() == "stop":
                    told = True
                    break
        except (OSError, ValueError):
            pass
        if not told:
            self.orphaned = True
        self.stop()

    def run(self) -> int:
        _set_subreaper()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop())
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        self.child_pid = proc.pid
        threading.Thread(target=self._watch_stdin, daemon=True).start()
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries anyway
                continue
            if pid == self.child_pid:
                self.child_status = os.waitstatus_to_exitcode(status)
                proc.returncode = self.child_status
        if self.orphaned and self.orphan_cleanup:
            shutil.rmtree(self.orphan_cleanup, ignore_errors=True)
        if self.child_status not in (None, 0) and not self.stopping.is_set():
            code = self.child_status
            return code if code > 0 else 128 - code
        return 0


def main(args: list[str]) -> int:
    pidfile: str | None = None
    orphan_cleanup: str | None = None
    grace = 5.0
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt == "--pidfile":
            pidfile = args.pop(0)
        elif opt == "--grace":
            grace = float(args.pop(0))
        elif opt == "--orphan-cleanup":
            orphan_cleanup = args.pop(0)
        else:
            print(f"_supervisor: unknown option {opt}", file=sys.stderr)
            return 2
    if not args or len(args) < 2:
        print("_supervisor: usage: [--pidfile P] [--grace S] -- COMMAND...", file=sys.stderr)
        return 2
    return Supervisor(args[1:], pidfile, grace, orphan_cleanup).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
