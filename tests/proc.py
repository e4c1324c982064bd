"""What /proc says of a process the tests started (Linux): for the tests of the runtime's
worker processes and of nodes killed mid-run."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the process name (state, ppid, pgrp, ...); None
    when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """The process runs (a zombie that only waits to be reaped does not)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"
