"""WorkerGroup's restart loop on its own, with worker runs that exit at once (the processes
themselves: test_workers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowrt.errors import MplError
from flowrt.runtime import workers
from flowrt.runtime.status import ERROR, STARTED, FlowStatus
from flowrt.runtime.workers import WorkerArgs, WorkerGroup


async def test_a_store_that_is_away_does_not_end_a_workers_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker exits while the MPL store is away (PostgreSQL restarting): its entries
    cannot be closed now, but it is started again, and the flow shows why it is down."""
    closing: list[list[str]] = []

    def abandon(reason: str, nodes: list[str]) -> int:
        closing.append(nodes)
        raise MplError("the MPL database is away")

    async def exits_at_once(self: WorkerGroup, args: WorkerArgs) -> int:
        await asyncio.sleep(0.01)
        return 1

    monkeypatch.setattr(WorkerGroup, "_run_once", exits_at_once)
    monkeypatch.setattr(workers, "RESTART_FIRST", 0.05)
    group = WorkerGroup(
        tenant=Path("/nonexistent"),
        flow="f",
        version=1,
        count=2,
        grace=1.0,
        hard_cap=1.0,
        lease=None,
        log_json=None,
        abandon=abandon,
        node="node-a",
    )
    group.start()
    await asyncio.sleep(0.5)
    try:
        assert len(closing) >= 3  # it kept starting the worker again
        assert closing[0] == ["node-a/f worker 2/2"]
        assert not any(task.done() for task in group._tasks)
        status = FlowStatus("f", 1, state=STARTED)
        group.merge(status)
        assert status.state == ERROR and "worker 2/2" in status.reason
        assert status.processes[1]["restarts"] >= 3
    finally:
        await group.stop(0.1)
