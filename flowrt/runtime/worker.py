"""One worker process of a flow with ``workers N``: partition K of its mailbox.

Started by the runtime (:mod:`flowrt.runtime.workers`), never by hand::

    python -m flowrt.runtime.worker TENANT FLOW VERSION INDEX COUNT GRACE LEASE LOG NODE

It runs the deployed flow like the runtime does (same :class:`FlowInstance`, same state and
MPL: the tenant's SQLite files, which SQLite lets several processes share, or its
PostgreSQL store), but polls only the mails of its partition, under that partition's lease;
its MPL entries name it as their node (after the runtime node's name on PostgreSQL). Every second
it writes its flow status as one JSON line to stdout, which the runtime merges into the
flow's status. It stops (handing back what it has not started, as the runtime does) on
SIGTERM, or when its stdin closes: the runtime is gone. The kernel kills it when the runtime
dies (``PR_SET_PDEATHSIG``), so a kill -9 of the runtime is a kill -9 of its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys

import structlog

from flowrt import logs, metrics
from flowrt._sqlite import expect_other_writers
from flowrt.adapters.registry import Adapters
from flowrt.errors import FlowrtError, summary
from flowrt.mpl.model import LogLevel
from flowrt.mpl.recorder import MplRecorder
from flowrt.runtime._linux import die_with
from flowrt.runtime.flow_instance import FlowInstance
from flowrt.runtime.status import ERROR
from flowrt.runtime.workers import EXIT_START_FAILED, EXIT_SUPERSEDED, WorkerArgs, node_name
from flowrt.security import TenantSecurity
from flowrt.store import open_deployments, open_mpl, open_state
from flowrt.store.pg.state import PgStateDB
from flowrt.tenant import Tenant

REPORT_EVERY = 1.0
WORKER_POOL = 2  # connections of each of a worker's PostgreSQL pools, at most

_log = structlog.get_logger("flowrt.runtime")


def report(instance: FlowInstance) -> bool:
    """One line for the runtime: the flow's status here and what this process counted.
    False when nobody reads them any more (the runtime closed its end)."""
    instance.refresh()
    line = json.dumps(
        {
            "status": dataclasses.asdict(instance.status),
            "counters": metrics.counter_totals(),
            "durations": metrics.duration_totals(),
        }
    )
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        # and no second complaint when Python flushes stdout at exit
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        return False
    return True


async def serve(args: WorkerArgs) -> int:
    tenant = Tenant(args.tenant)
    deployments = open_deployments(tenant)
    deployment = deployments.get(args.flow)
    deployments.close()
    if deployment is None or deployment.version != args.version:
        return EXIT_SUPERSEDED
    security = TenantSecurity.open(tenant)
    # one flow's partition: two connections a pool (PostgreSQL) are plenty, and a node runs
    # up to 15 workers a flow against the server's connection limit
    state = open_state(tenant, max_size=WORKER_POOL)
    store = open_mpl(tenant, max_size=WORKER_POOL)
    assert state is not None and store is not None  # create=True opens or raises
    state.lease_ttl = args.lease
    if args.node is not None and isinstance(state, PgStateDB):
        state.node = args.node  # its leases' owners start with the node's name, as its runtime's
    node = node_name(args.flow, args.partition, args.node)
    recorder = MplRecorder(store, level=LogLevel.INFO, node=node)
    adapters = Adapters()
    instance = FlowInstance(
        deployment,
        security=security,
        recorder=recorder,
        state=state,
        adapters=adapters,
        partition=args.partition,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.ensure_future(_until_stdin_closes(stop))
    try:
        if not instance.start():
            report(instance)
            return EXIT_START_FAILED
        instance.run()
        while not stop.is_set():
            if not report(instance):  # the runtime is not listening: it is gone
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_EVERY)
        await instance.stop(args.grace)
        report(instance)
        return 1 if instance.status.state == ERROR else 0
    finally:
        watch.cancel()
        with contextlib.suppress(Exception):
            await adapters.aclose()
        recorder.close()
        store.close()
        state.close()


async def _until_stdin_closes(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # the runtime writes nothing: this returns at EOF
    stop.set()


def main(argv: list[str] | None = None) -> int:
    args = WorkerArgs.parse(sys.argv[1:] if argv is None else argv)
    die_with(os.getppid(), code=1)  # the runtime that started us
    expect_other_writers()  # the runtime and the other workers write the same files
    logs.configure(json=args.log_json)
    structlog.contextvars.bind_contextvars(worker=args.partition.describe())
    try:
        return asyncio.run(serve(args))
    except FlowrtError as exc:  # the tenant cannot be opened: the runtime logs the exit
        _log.error("worker could not start", flow=args.flow, error=summary(exc))
        return EXIT_START_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
