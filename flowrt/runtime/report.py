"""What ``flowrt status`` and the monitor's flows view show: each deployed flow with what the
runtime last reported about it, and the held locks. Read from the tenant's files only, so it
works with or without a running runtime."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from flowrt.errors import NotFoundError
from flowrt.poll_failures import PollFailure
from flowrt.runtime.deployments import Deployment
from flowrt.runtime.status import RuntimeStatus, read_status
from flowrt.source_state import LockInfo
from flowrt.store import is_shared, open_deployments, open_mpl, open_state
from flowrt.tenant import Tenant

__all__ = ["StatusReport", "node_of", "poll_failures_report", "shared_report", "status_report"]

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
# the processes of a flow with `workers N`, the runtime's own partition first
PROCESS_COLUMNS = [
    "worker",
    "pid",
    "state",
    "completed",
    "failed",
    "last_poll",
    "restarts",
    "last_error",
]


@dataclasses.dataclass(frozen=True)
class StatusReport:
    """``nodes`` (None on a tenant of one runtime): the runtime nodes of a shared store, each
    with what it holds; then ``alive`` means that one of them runs, and each flow row names
    the node running it (``node``: the one holding its mailbox lease, ``held_since``, or
    between polls the one that polled it last)."""

    runtime: RuntimeStatus | None
    alive: bool
    flows: list[dict[str, Any]]
    locks: list[LockInfo]
    nodes: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``flowrt status --format json``."""
        if self.nodes is not None:
            return {
                "nodes": self.nodes,
                "flows": self.flows,
                "locks": [_lock_row(lock) for lock in self.locks],
            }
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
    """Every deployed flow (or the one named; NotFoundError if it is not deployed). On a
    shared store, from the node registry and the leases in it (:func:`shared_report`)."""
    if is_shared(tenant):
        return shared_report(tenant, name)
    runtime = read_status(tenant)
    alive = runtime is not None and runtime.alive()
    deployments = _deployments(tenant, name)
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
                "processes": flow.processes if flow and alive else [],
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


def _deployments(tenant: Tenant, name: str | None) -> list[Deployment]:
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
    return deployments


def shared_report(tenant: Tenant, name: str | None = None) -> StatusReport:
    """The flows of a tenant whose nodes share a PostgreSQL store: each node (running,
    stopped or gone, what it holds, since when), each flow with the node holding its mailbox
    and the freshest report of the running nodes, and the leases. Read from the store, so
    every node's monitor shows the same."""
    from flowrt.store.pg.state import NODE_TTL, PgStateDB

    deployments = _deployments(tenant, name)
    dead = _dead_letters(tenant)
    state = open_state(tenant)
    assert isinstance(state, PgStateDB)
    try:
        now = state.now()
        nodes = state.nodes()
        locks = state.locks()
    finally:
        state.close()
    # by flow (a flow with workers N holds a lease per partition: FLOW#k/N)
    held = {lock.info.split(":")[0].split("#")[0]: lock for lock in locks if not lock.expired(now)}
    node_rows = []
    for node in nodes:
        alive = node.alive(now, NODE_TTL)
        holds = sorted(
            lock.info.split(":")[0] for lock in held.values() if node_of(lock.owner) == node.name
        )
        node_rows.append(
            {
                "node": node.name,
                "state": "running" if alive else ("stopped" if node.stopped else "gone"),
                "host": node.host,
                "pid": node.pid,
                "since": _iso(node.started),
                "heartbeat": _iso(node.heartbeat),
                "holds": ", ".join(holds),
            }
        )
    rows: list[dict[str, Any]] = []
    for deployment in deployments:
        if name is not None and deployment.name != name:
            continue
        report = _latest_report(nodes, deployment.name, deployment.version, now, NODE_TTL)
        lock = held.get(deployment.name)
        # a mailbox lease is held while a poll runs; between polls the node that polled
        # last is the one running the flow
        polled_by = _last_poller(nodes, deployment.name, deployment.version, now, NODE_TTL)
        error = (report.get("reason") or report.get("last_error", "")) if report else ""
        rows.append(
            {
                "flow": deployment.name,
                "version": deployment.version,
                "state": report.get("state", "PENDING") if report else "NOT RUNNING",
                "node": node_of(lock.owner) if lock else polled_by,
                "held_since": _iso(lock.acquired) if lock else "",
                "last_poll": report.get("last_poll", "") if report else "",
                "completed": int(report.get("completed", 0)) if report else 0,
                "failed": int(report.get("failed", 0)) if report else 0,
                "dead_letters": dead.get(deployment.name, 0),
                "last_error": error,
                "hint": (report.get("last_hint", "") if report and error else ""),
                "chain": "",
                "warning": report.get("warning", "") if report else "",
                "processes": report.get("processes", []) if report else [],
            }
        )
    alive_nodes = any(row["state"] == "running" for row in node_rows)
    return StatusReport(runtime=None, alive=alive_nodes, flows=rows, locks=locks, nodes=node_rows)


def node_of(owner: str) -> str:
    """The node of a lease's owner (``NODE/host:pid:random``); "" for a single runtime's."""
    return owner.split("/", 1)[0] if "/" in owner else ""


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _lock_row(lock: LockInfo) -> dict[str, Any]:
    return {
        "lock": lock.key,
        "node": node_of(lock.owner),
        "holder": lock.describe(),
        "since": _iso(lock.acquired),
        "expires": _iso(lock.expires),
        "epoch": lock.epoch,
    }


def _latest_report(
    nodes: list[Any], flow: str, version: int, now: float, ttl: float
) -> dict[str, Any] | None:
    """The freshest report of ``flow`` at ``version`` among the running nodes."""
    reports = [report for _node, report in _reports(nodes, flow, version, now, ttl)]
    return max(reports, key=lambda report: str(report.get("updated", "")), default=None)


def _last_poller(nodes: list[Any], flow: str, version: int, now: float, ttl: float) -> str:
    """The running node whose report of ``flow`` at ``version`` has the latest poll."""
    best, name = "", ""
    for node, report in _reports(nodes, flow, version, now, ttl):
        polled = str(report.get("last_poll") or "")
        if polled > best:
            best, name = polled, node.name
    return name


def _reports(
    nodes: list[Any], flow: str, version: int, now: float, ttl: float
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Each running node with its report of ``flow`` at ``version``."""
    for node in nodes:
        if not node.alive(now, ttl):
            continue
        report = node.status.get("flows", {}).get(flow)
        if isinstance(report, dict) and report.get("version") == version:
            yield node, report


def poll_failures_report(
    tenant: Tenant, name: str | None = None, *, limit: int = 20
) -> list[PollFailure]:
    """The newest polls that could not run, of the flow named (NotFoundError if it is not
    deployed) or of all."""
    _deployments(tenant, name)
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
