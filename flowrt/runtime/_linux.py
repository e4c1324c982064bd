"""The Linux process controls (prctl) that the runtime, its starter and its workers use;
where there is no prctl they do nothing (and the subreaper is refused)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int | bytes) -> int:
    with contextlib.suppress(OSError, AttributeError):
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, value))
    return -1


def die_with(parent: int, *, code: int) -> None:
    """Ask the kernel for SIGKILL when ``parent`` dies; exit with ``code`` now if it is
    gone already (it died before we asked)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(code)


def set_name(name: str) -> None:
    """This process's name in ``ps -e`` and ``top`` (/proc/PID/comm: 15 bytes)."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def become_subreaper() -> bool:
    """Adopt the orphans among this process's descendants; False where that cannot be."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
