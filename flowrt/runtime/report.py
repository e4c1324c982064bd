"""What ``flowrt status`` and the monitor's flows view show: each deployed flow with what the
runtime last reported about it, and the held locks. Read from the tenant's files only, so it
works with or without a running runtime."""

from __future__ import annotations

import dataclasses
from typing import Any

from flowrt.errors import NotFoundError
from flowrt.poll_failures import PollFailure
from flowrt.runtime.status import RuntimeStatus, read_status
from flowrt.source_state import LockInfo
from flowrt.store import open_deployments, open_mpl, open_state
from flowrt.tenant import Tenant

__all__ = ["StatusReport", "poll_failures_report", "status_report"]

FLOW_COLUMNS = [
    "flow",
    "version",
    "state",
    "last_poll",
    "completed",
    "failed",
    "dead_letters",
    "last_error",
]


@dataclasses.dataclass(frozen=True)
class StatusReport:
    runtime: RuntimeStatus | None
    alive: bool
    flows: list[dict[str, Any]]
    locks: list[LockInfo]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``flowrt status --format json``."""
        runtime = self.runtime
        return {
            "runtime": None
            if runtime is None
            else {
                "alive": self.alive,
                "pid": runtime.pid,
                "host": runtime.host,
                "started_at": runtime.started_at,
                "heartbeat_at": runtime.heartbeat_at,
            },
            "flows": self.flows,
            "locks": [{"key": lock.key, "holder": lock.describe()} for lock in self.locks],
        }


def status_report(tenant: Tenant, name: str | None = None) -> StatusReport:
    """Every deployed flow (or the one named; NotFoundError if it is not deployed)."""
    runtime = read_status(tenant)
    alive = runtime is not None and runtime.alive()
    store = open_deployments(tenant)
    try:
        deployments = store.all()
    finally:
        store.close()
    if name is not None and name not in {d.name for d in deployments}:
        known = ", ".join(d.name for d in deployments[:5]) or "none"
        raise NotFoundError(
            f"no deployed flow named {name!r}",
            hint=f"see `flowrt status` (deployed flows: {known})",
        )
    dead = _dead_letters(tenant)
    rows: list[dict[str, Any]] = []
    for deployment in deployments:
        if name is not None and deployment.name != name:
            continue
        # a stopped runtime's last report still tells the counts and the last error
        flow = runtime.flows.get(deployment.name) if runtime else None
        if flow is not None and flow.version != deployment.version:
            flow = None
        state = (flow.state if flow else "PENDING") if alive else "NOT RUNNING"
        rows.append(
            {
                "flow": deployment.name,
                "version": deployment.version,
                "state": state,
                "last_poll": flow.last_poll if flow else "",
                "completed": flow.completed if flow else 0,
                "failed": flow.failed if flow else 0,
                "dead_letters": dead.get(deployment.name, 0),
                "last_error": (flow.reason or flow.last_error) if flow else "",
                "hint": flow.last_hint if flow and flow.last_error else "",
                "chain": "",
                "warning": flow.warning if flow else "",
            }
        )
    state_db = open_state(tenant, create=False)
    locks = state_db.locks() if state_db is not None else []
    if state_db is not None:
        for row in rows:
            # the chain of a poll that failed, when that is the flow's last error
            latest = _poll_failures(state_db, str(row["flow"]), 1) if row["hint"] else []
            if latest and latest[0].summary in str(row["last_error"]):
                row["chain"] = latest[0].chain
        state_db.close()
    return StatusReport(runtime=runtime, alive=alive, flows=rows, locks=locks)


def poll_failures_report(
    tenant: Tenant, name: str | None = None, *, limit: int = 20
) -> list[PollFailure]:
    """The newest polls that could not run, of the flow named (NotFoundError if it is not
    deployed) or of all."""
    store = open_deployments(tenant)
    try:
        deployments = store.all()
    finally:
        store.close()
    if name is not None and name not in {d.name for d in deployments}:
        known = ", ".join(d.name for d in deployments[:5]) or "none"
        raise NotFoundError(
            f"no deployed flow named {name!r}",
            hint=f"see `flowrt status` (deployed flows: {known})",
        )
    state_db = open_state(tenant, create=False)
    if state_db is None:
        return []
    try:
        return _poll_failures(state_db, name, limit)
    finally:
        state_db.close()


def _poll_failures(state_db: object, flow: str | None, limit: int) -> list[PollFailure]:
    # both stores keep the poll-failure log; a stand-in state (tests, tools) may not
    read = getattr(state_db, "poll_failures", None)
    return list(read(flow, limit=limit)) if read is not None else []


def _dead_letters(tenant: Tenant) -> dict[str, int]:
    """Dead letters not replayed, by flow (``flowrt deadletter list`` has them)."""
    store = open_mpl(tenant, create=False)
    if store is None:
        return {}
    with store:
        return store.dead_letter_counts()
