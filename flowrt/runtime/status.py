"""The runtime's report of itself: which flows run, in which state, with which counts.

``flowrt run`` writes ``<tenant>/runtime/status.json`` atomically whenever something changes
and at least every heartbeat; ``flowrt deploy`` and ``flowrt status`` read it. A status whose
heartbeat is older than :data:`STALE_AFTER` belongs to a runtime that is gone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO, Any

from flowrt._fs import atomic_write
from flowrt.errors import TenantError
from flowrt.tenant import Tenant

# a status with nothing new but poll times is written this often (a thousand flows' status is
# ~300 KB); a change a reader acts on (a state, a failure, a deploy) within half a second
HEARTBEAT = 2.0
STALE_AFTER = dt.timedelta(seconds=5)

# flow states
STARTING = "STARTING"
STARTED = "STARTED"
ERROR = "ERROR"
STOPPED = "STOPPED"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass
class FlowStatus:
    name: str
    version: int
    state: str = STARTING
    reason: str = ""
    last_poll: str = ""
    last_success: str = ""
    completed: int = 0
    failed: int = 0
    last_error: str = ""
    last_hint: str = ""  # what to do about last_error
    consecutive_failures: int = 0
    dead_lettered: int = 0
    warning: str = ""  # e.g. the mailbox cannot be claimed against other runtimes
    updated: str = dataclasses.field(default_factory=now_iso)
    # with `workers N`: one row per process (its partition, pid, state, counts, last poll
    # and error, restarts), the runtime's own first; empty for a flow of one process
    processes: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RuntimeStatus:
    pid: int
    host: str
    started_at: str
    heartbeat_at: str
    flows: dict[str, FlowStatus] = dataclasses.field(default_factory=dict)
    stopping: bool = False

    def alive(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        beat = dt.datetime.fromisoformat(self.heartbeat_at)
        return not self.stopping and now - beat < STALE_AFTER

    # each flow's JSON kept with the values it was made from: a thousand flows are written
    # every heartbeat, and most of them did not change since the last write
    _fragments: dict[str, tuple[tuple[Any, ...], bytes]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def to_json(self) -> bytes:
        # dataclasses.asdict (deep copies) and indenting cost 80 ms a write with a thousand
        # flows; json.dumps of every flow 12 ms; joining the fragments of unchanged flows 1 ms
        data: dict[str, Any] = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("flows", "_fragments")
        }
        head = json.dumps(data, separators=(",", ":")).encode("utf-8")
        flows = b",".join([self._fragment(name, flow) for name, flow in self.flows.items()])
        if len(self._fragments) > len(self.flows):  # flows undeployed
            for name in [n for n in self._fragments if n not in self.flows]:
                del self._fragments[name]
        return head[:-1] + b',"flows":{' + flows + b"}}"

    def _fragment(self, name: str, flow: FlowStatus) -> bytes:
        """``"name":{...}`` of one flow, made again only when one of its values changed."""
        values = vars(flow)
        key = tuple(values.values())
        cached = self._fragments.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        fragment = json.dumps({name: values}, separators=(",", ":"))[1:-1].encode("utf-8")
        self._fragments[name] = (key, fragment)
        return fragment

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeStatus:
        flows = {name: FlowStatus(**value) for name, value in data.get("flows", {}).items()}
        return cls(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started_at=str(data["started_at"]),
            heartbeat_at=str(data["heartbeat_at"]),
            flows=flows,
            stopping=bool(data.get("stopping", False)),
        )


def status_path(tenant: Tenant) -> Path:
    return tenant.root / "runtime" / "status.json"


def read_status(tenant: Tenant) -> RuntimeStatus | None:
    try:
        return RuntimeStatus.from_json(json.loads(status_path(tenant).read_text("utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a status from an older version or a torn disk: treat as no runtime


def write_status(tenant: Tenant, status: RuntimeStatus) -> None:
    status.heartbeat_at = now_iso()
    # a live view, rewritten up to twice a second by a busy runtime: not worth two fsyncs
    # each time (a runtime that crashed is told by its lock and its old heartbeat)
    atomic_write(status_path(tenant), status.to_json(), mode=0o644, durable=False)


class RuntimeLock:
    """One ``flowrt run`` per tenant: an exclusive flock held for the runtime's lifetime."""

    def __init__(self, tenant: Tenant, *, node: str | None = None) -> None:
        name = "runtime.lock" if node is None else f"node-{node}.lock"
        self.path = tenant.root / "runtime" / name
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        except PermissionError as exc:
            raise TenantError(
                f"the tenant directory {self.path.parent.parent} is read-only",
                hint="the runtime writes its status, the MPL and its state there",
            ) from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TenantError(
                f"another flowrt run is already running on this tenant ({holder})",
                hint="stop it first, or use another tenant with --tenant",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
