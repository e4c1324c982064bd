"""Running one server process tree under ``_supervisor.py`` (see there for why)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "ServerProcess",
    "ServerStartError",
    "ServerUnavailable",
    "log_tail",
    "make_workdir",
    "require_binary",
    "require_root",
]

SUPERVISOR = Path(__file__).with_name("_supervisor.py")


class ServerUnavailable(RuntimeError):
    """A server binary is missing on this machine; the message names the Debian package."""


class ServerStartError(RuntimeError):
    """A server did not come up; the message includes the end of its log(s)."""


def require_binary(path: str, package: str, what: str) -> str:
    """Return ``path`` if it is executable, else raise ``ServerUnavailable`` naming the package."""
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(os.path.basename(path), path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found:
        return found
    raise ServerUnavailable(
        f"{what} is not installed ({path} not found): install the Debian package "
        f"{package!r} (scripts/install-servers installs all test servers)"
    )


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ServerUnavailable(
            f"{what} test instances must be started as root (they run their daemons as the "
            "packages' unprivileged users, e.g. dovecot, dovenull, postfix, nobody)"
        )


def _world_traversable(path: Path) -> bool:
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def make_workdir(prefix: str) -> Path:
    """A fresh private directory (mode 0755) for one server instance.

    Under ``$TMPDIR`` when the daemons' unprivileged users can reach it and its path is short
    enough for the servers' unix sockets, else under /tmp.
    """
    base = Path(tempfile.gettempdir())
    if len(str(base)) > 40 or not _world_traversable(base):
        base = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(path, 0o755)
    return path


def log_tail(path: str | Path, lines: int = 60) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _stop_all_at_exit() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(Exception):
            # Never closed by its owner: stop as an orphan, so the supervisor also deletes
            # the server's temporary directory.
            proc.stop(timeout=5, abandon=True)


class ServerProcess:
    """One supervised server. ``argv`` may daemonize if ``pidfile`` names its pid file.

    ``orphan_cleanup``: a directory the supervisor deletes if this process dies without
    stopping the server (normally the owner deletes it in ``close()``).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        output_path: str | Path,
        pidfile: str | Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        grace: float = 5.0,
        orphan_cleanup: str | Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.output_path = Path(output_path)
        self.pidfile = Path(pidfile) if pidfile else None
        self.env = env
        self.cwd = cwd
        self.grace = grace
        self.orphan_cleanup = orphan_cleanup
        self._popen: subprocess.Popen[bytes] | None = None

    # -- state ----------------------------------------------------------------------------

    @property
    def supervisor_pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def main_pid(self) -> int | None:
        """The server's own pid (from the pid file when it daemonizes)."""
        if self.pidfile is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(self.pidfile.read_text().split()[0])
            return None
        if self._popen is None:
            return None
        children = _children(self._popen.pid)
        return children[0] if children else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        cmd = [sys.executable, str(SUPERVISOR), "--grace", str(self.grace)]
        if self.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()
            cmd += ["--pidfile", str(self.pidfile)]
        if self.orphan_cleanup is not None:
            cmd += ["--orphan-cleanup", str(self.orphan_cleanup)]
        cmd += ["--", *self.argv]
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output_path, "ab") as out:
            self._popen = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C in a terminal goes to pytest, not the servers
            )
        with _live_lock:
            _live.add(self)

    def wait_ready(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        logs: Sequence[str | Path] = (),
    ) -> None:
        """Poll ``ready()`` until true; raise ``ServerStartError`` with logs otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return
            if not self.alive:
                self.stop()
                raise ServerStartError(
                    f"{self.name} exited during start-up (status "
                    f"{self._popen.returncode if self._popen else '?'})\n"
                    + self.describe_logs(logs)
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} not ready after {timeout:.0f}s\n" + self.describe_logs(logs)
                )
            time.sleep(0.02)

    def describe_logs(self, logs: Sequence[str | Path] = ()) -> str:
        parts = [f"--- {self.output_path} (stdout/stderr) ---\n{log_tail(self.output_path)}"]
        for log in logs:
            parts.append(f"--- {log} ---\n{log_tail(log)}")
        return "\n".join(parts)

    def stop(self, timeout: float | None = None, *, abandon: bool = False) -> None:
        """Stop the server tree and wait for it (bounded); idempotent.

        ``abandon=True`` stops it the way the death of this process would (EOF), which also
        deletes the ``orphan_cleanup`` directory.
        """
        popen = self._popen
        if popen is None:
            return
        timeout = self.grace + 5 if timeout is None else timeout
        if popen.poll() is None and popen.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                if abandon:
                    popen.stdin.close()
                else:
                    popen.stdin.write(b"stop\n")
                    popen.stdin.flush()
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in _descendants(popen.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            popen.kill()
            popen.wait(timeout=5)
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        with _live_lock:
            _live.discard(self)

    def kill(self, timeout: float = 10.0) -> None:
        """Simulate a crash: SIGKILL the server's main process, then clean up the rest."""
        pid = self.main_pid()
        sup = self.supervisor_pid
        if pid and sup and pid in _descendants(sup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop(timeout=timeout)


def _ppid_map() -> dict[int, int]:
    result: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
        if len(rest) >= 2:
            result[int(entry)] = int(rest[1])
    return result


def _children(pid: int) -> list[int]:
    return sorted(p for p, pp in _ppid_map().items() if pp == pid)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
