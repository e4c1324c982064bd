"""The processes that work one flow's mailbox beside the runtime (``workers N``).

One process keeps one core busy: a flow whose mailbox brings more mail than that splits it
by UID into N partitions (:class:`flowrt.source_state.Partition`). The runtime's own
:class:`FlowInstance` polls partition 1; a :class:`WorkerGroup` starts a worker process
(:mod:`flowrt.runtime.worker`) for each of the others and keeps them running:

- each worker has its partition's lease, connection, in-flight mails, and MPL entries named
  after it (``FLOW worker 2/4``); the state and MPL files are shared (SQLite, WAL), so every
  rule of a poller holds per partition;
- its status comes as JSON lines on its stdout; :meth:`WorkerGroup.merge` adds the counts
  into the flow's status and shows a worker that failed, and its counters and message
  durations are added into the runtime's ``/metrics``;
- a worker that exits unexpectedly is started again after a backoff (1 s doubling to 60 s),
  its unfinished MPL entries closed ABANDONED first (its mails are in the mailbox still);
- :meth:`stop` sends SIGTERM (each worker hands back what it has not started and lets the
  mails in flight finish within the grace period) and kills what is left after the cap;
- the workers die with the runtime (the kernel's parent-death signal), so a kill -9 of the
  runtime is a kill -9 of its workers, as with one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from flowrt import metrics
from flowrt.errors import FlowrtError
from flowrt.runtime.starter import StarterGone, WorkerStarter
from flowrt.runtime.status import ERROR, STARTED, STARTING, FlowStatus
from flowrt.source_state import Partition

STARTING_TIME = 10.0  # the longest the runtime's own partition waits for its workers
RESTART_FIRST = 1.0
RESTART_MAX = 60.0
ABANDONED_REASON = (
    "the worker process stopped (crashed or was killed) while this message was processed"
)

_log = structlog.get_logger("flowrt.runtime")

EXIT_START_FAILED = 3  # the flow could not start here: the runtime shows why and retries
EXIT_SUPERSEDED = 4  # another version is deployed now: the runtime is replacing this one


def node_name(flow: str, partition: Partition, node: str | None = None) -> str:
    """What a worker's MPL entries name as their node (unique per flow and partition); on
    a shared store, after the runtime node's name (``NODE/FLOW worker 2/3``), so that the
    nodes that sweep a gone node's entries close its workers' too."""
    own = f"{flow} worker {partition.describe()}"
    return own if node is None else f"{node}/{own}"


@dataclasses.dataclass(frozen=True)
class WorkerArgs:
    """What a worker process is started with (its command line)."""

    tenant: Path
    flow: str
    version: int
    partition: Partition
    grace: float
    lease: float | None  # `flowrt run --lease`
    log_json: bool | None
    node: str | None = None  # the runtime node's name, on a shared store

    def argv(self) -> list[str]:
        """The command line of a worker started as a new process."""
        return [sys.executable, "-m", "flowrt.runtime.worker", *self.args()]

    def args(self) -> list[str]:
        log = "auto" if self.log_json is None else "json" if self.log_json else "console"
        return [
            str(self.tenant),
            self.flow,
            str(self.version),
            str(self.partition.index),
            str(self.partition.count),
            str(self.grace),
            "-" if self.lease is None else str(self.lease),
            log,
            self.node or "-",
        ]

    @classmethod
    def parse(cls, argv: list[str]) -> WorkerArgs:
        # (a runtime of the version before, under an upgrade in place: no node)
        tenant, flow, version, index, count, grace, lease, log, node = [*argv, "-"][:9]
        return cls(
            Path(tenant),
            flow,
            int(version),
            Partition(int(index), int(count)),
            float(grace),
            None if lease == "-" else float(lease),
            None if log == "auto" else log == "json",
            None if node == "-" else node,
        )


class WorkerProcess(Protocol):
    """What the group uses of a worker: a started process, or one the starter forked."""

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


class WorkerGroup:
    """Worker processes 2..N of one deployed flow version."""

    def __init__(
        self,
        *,
        tenant: Path,
        flow: str,
        version: int,
        count: int,
        grace: float,
        hard_cap: float,
        lease: float | None,
        log_json: bool | None,
        abandon: Callable[[str, list[str]], int],
        on_change: Callable[[], None] = lambda: None,
        starter: WorkerStarter | None = None,
        node: str | None = None,
    ) -> None:
        self.count = count
        self._starter = starter
        self._args = [
            WorkerArgs(tenant, flow, version, Partition(index, count), grace, lease, log_json, node)
            for index in range(1, count)
        ]
        self._hard_cap = hard_cap
        self._abandon = abandon
        self._on_change = on_change
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._procs: dict[int, WorkerProcess] = {}
        self.reports: dict[int, FlowStatus] = {}
        # what earlier runs of a worker that was started again counted (completed, failed,
        # dead-lettered): the flow's counts do not go back when a worker starts over
        self._carried: dict[int, tuple[int, int, int]] = {}
        self.problems: dict[int, str] = {}  # a worker that exited, and why
        self._restarts: dict[int, int] = {}  # how often each worker was started again
        self._last_error: dict[int, str] = {}  # what its last report said was wrong
        self._log = _log.bind(flow=flow, version=version)

    def start(self) -> None:
        for args in self._args:
            self._tasks.append(asyncio.ensure_future(self._keep_running(args)))

    async def started(self, timeout: float = STARTING_TIME) -> None:
        """Until every worker reported once (it polls), exited, or ``timeout`` passed: the
        runtime's own partition starts with them, not a Python start-up ahead of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and not self._stopping.is_set():
            if all(i in self.reports or i in self.problems for i in range(1, self.count)):
                return
            await asyncio.sleep(0.05)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker; kill what still runs after the grace period and the cap
        (its mails in flight get their receivers' timeouts first, as in the runtime)."""
        self._stopping.set()
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace + self._hard_cap + 5)
            for proc in self._procs.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)

    def merge(self, status: FlowStatus) -> None:
        """Add what the workers report into ``status`` (the runtime's own partition's), and
        list each process in ``status.processes``."""
        status.processes = self._processes(status)
        for completed, failed, dead in self._carried.values():
            status.completed += completed
            status.failed += failed
            status.dead_lettered += dead
        for index, report in sorted(self.reports.items()):
            status.completed += report.completed
            status.failed += report.failed
            status.dead_lettered += report.dead_lettered
            status.last_poll = max(status.last_poll, report.last_poll)
            status.last_success = max(status.last_success, report.last_success)
            status.consecutive_failures = max(
                status.consecutive_failures, report.consecutive_failures
            )
            if report.state == ERROR and status.state == STARTED:
                where = f"worker {Partition(index, self.count).describe()}"
                status.state = ERROR
                status.reason = f"{where}: {report.reason}"
            if report.last_error and not status.last_error:
                status.last_error = report.last_error
                status.last_hint = report.last_hint
            if report.warning and not status.warning:
                status.warning = report.warning
        for index, problem in sorted(self.problems.items()):
            if status.state == STARTED:
                status.state = ERROR
                status.reason = f"worker {Partition(index, self.count).describe()}: {problem}"

    def _processes(self, own: FlowStatus) -> list[dict[str, Any]]:
        """A row per process: the runtime's own partition (``own``), then each worker's."""
        rows = [_process_row(Partition(0, self.count), own, os.getpid(), 0, "", (0, 0, 0))]
        for index in range(1, self.count):
            proc = self._procs.get(index)
            rows.append(
                _process_row(
                    Partition(index, self.count),
                    self.reports.get(index),
                    getattr(proc, "pid", None),
                    self._restarts.get(index, 0),
                    self.problems.get(index, ""),
                    self._carried.get(index, (0, 0, 0)),
                )
            )
        return rows

    async def _keep_running(self, args: WorkerArgs) -> None:
        index = args.partition.index
        wait = RESTART_FIRST
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            began = loop.time()
            code = await self._run_once(args)
            if loop.time() - began > RESTART_MAX:  # it ran well for a while: no backoff left
                wait = RESTART_FIRST
            if self._stopping.is_set() or code == EXIT_SUPERSEDED:
                return
            self._restarts[index] = self._restarts.get(index, 0) + 1
            mine = node_name(args.flow, args.partition, args.node)
            try:  # in a thread: a PostgreSQL store that is away must not stall every flow
                closed = await asyncio.to_thread(self._abandon, ABANDONED_REASON, [mine])
            except FlowrtError as exc:  # the runtime's next start or its node's sweep does it
                closed = 0
                self._log.warning("cannot close the stopped worker's entries", error=str(exc))
            said = self._last_error.pop(index, "")  # e.g. why the flow could not start there
            self.problems[index] = (
                f"{said + '; ' if said else ''}exited with code {code}; started again in {wait:g} s"
            )
            self._on_change()
            self._log.error(
                "worker process exited; starting it again",
                worker=args.partition.describe(),
                code=code,
                abandoned=closed,
                restart_in_seconds=wait,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            wait = min(wait * 2, RESTART_MAX)

    async def _start(self, args: WorkerArgs) -> WorkerProcess:
        """Fork the worker from the starter (see starter.py), or else start a new process."""
        if self._starter is not None and not self._starter.gone:
            try:
                return await self._starter.start(args.args())
            except StarterGone as exc:
                self._log.warning(
                    "cannot fork workers; starting them as new processes", reason=str(exc)
                )
        return await asyncio.create_subprocess_exec(
            *args.argv(),
            stdin=asyncio.subprocess.PIPE,  # never written: its end tells the worker we are gone
            stdout=asyncio.subprocess.PIPE,
        )

    async def _run_once(self, args: WorkerArgs) -> int:
        index = args.partition.index
        try:
            proc = await self._start(args)
        except OSError as exc:  # no processes or files left, say: tried again after a backoff
            self._last_error[index] = f"cannot start its process: {exc}"
            return EXIT_START_FAILED
        self._procs[index] = proc
        if self._stopping.is_set():  # the stop came while it was being started
            proc.send_signal(signal.SIGTERM)
        counted: metrics.Totals = {}  # this run's totals, added to the runtime's metrics
        timed: dict[str, list[float]] = {}  # and its message durations
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                try:
                    fields = json.loads(line)
                    self.reports[index] = FlowStatus(**fields["status"])
                    metrics.add_counts(fields["counters"], counted)
                    metrics.add_durations(fields.get("durations", {}), timed)
                except (ValueError, TypeError, KeyError):  # not a report: keep the last one
                    self._log.warning("unreadable worker report", line=line[:200].decode("replace"))
                    continue
                self.problems.pop(index, None)
                self._on_change()
            return await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            self._procs.pop(index, None)
            last = self.reports.pop(index, None)
            if last is not None:
                self._last_error[index] = last.reason if last.state == ERROR else ""
                before = self._carried.get(index, (0, 0, 0))
                self._carried[index] = (
                    before[0] + last.completed,
                    before[1] + last.failed,
                    before[2] + last.dead_lettered,
                )


def _process_row(
    partition: Partition,
    report: FlowStatus | None,
    pid: int | None,
    restarts: int,
    problem: str,
    carried: tuple[int, int, int],
) -> dict[str, Any]:
    """What ``flowrt status`` shows of one process of a flow with ``workers N``."""
    if report is None:
        state, error = (ERROR if problem else STARTING), problem
    else:
        state, error = report.state, problem or report.reason or report.last_error
    return {
        "worker": partition.describe(),
        "pid": pid,
        "state": state,
        "completed": carried[0] + (report.completed if report else 0),
        "failed": carried[1] + (report.failed if report else 0),
        "last_poll": report.last_poll if report else "",
        "restarts": restarts,
        "last_error": error,
    }
