"""The runtime process (``flowrt run``): every deployed flow, kept in step with deployments.

- One runtime per tenant (an exclusive lock); a second one refuses to start and says why.
  With a PostgreSQL store, one runtime per *node name* instead (``flowrt run --node NAME``):
  several nodes share the tenant, each mailbox polled by one of them at a time (its lease),
  and each node reports its status into the store's node registry.
- Deploys and undeploys are picked up within a second: the deployments' generation counter
  is checked every :data:`WATCH_INTERVAL`. A new version replaces the old one after the old
  one finished the mail in hand (the mailbox lock keeps the two from polling together).
- A flow that fails to start is in ERROR with its reason; the others run on.
- SIGTERM or Ctrl-C: polling stops, the mail in hand may finish within the grace period,
  what is still unfinished then is handed back (left unmarked in the mailbox, ABANDONED in
  the MPL), and the process exits.
- Flows that start together (a runtime starting with hundreds of deployed flows) open their
  first connections at most :data:`START_RATE` a second: a thousand TLS logins at once
  overwhelm the mail server's login processes and the runtime's own event loop (a quarter of
  them timed out waiting for the greeting in ``benchmarks/many_mailboxes.py``).
- ``once``: one poll of each flow now, then exit (for tests and by hand); with ``due``
  only the flows whose schedule has a run due since their last recorded poll (for a cron
  job or systemd timer that starts the runtime every few minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import signal
import socket
import time
from typing import TYPE_CHECKING

import structlog

from flowrt._sqlite import expect_other_writers
from flowrt.adapters.registry import Adapters
from flowrt.errors import FlowrtError
from flowrt.mpl.model import LogLevel
from flowrt.mpl.recorder import MplRecorder
from flowrt.net.tls_buffers import use_small_tls_buffers
from flowrt.runtime.deployments import Deployment
from flowrt.runtime.flow_instance import FlowInstance
from flowrt.runtime.monitor import Monitor
from flowrt.runtime.starter import WorkerStarter
from flowrt.runtime.status import (
    ERROR,
    HEARTBEAT,
    RuntimeLock,
    RuntimeStatus,
    now_iso,
    write_status,
)
from flowrt.runtime.workers import WorkerGroup
from flowrt.security import TenantSecurity
from flowrt.store import MplBackend, StateBackend, is_shared, open_deployments, open_mpl, open_state
from flowrt.store.pg.state import NODE_TTL, PgStateDB
from flowrt.tenant import Tenant

if TYPE_CHECKING:
    from flowrt.notify.notifier import Notifier, NotifierTask

WATCH_INTERVAL = 0.2
STATUS_GAP = 0.5  # at most two status writes a second for changes (plus the heartbeat)
NODE_HEARTBEAT = 1.0  # a node's report in a shared store: other nodes judge it by NODE_TTL
START_RATE = 40.0  # flows per second whose first connection opens, when many start at once
ABANDONED_REASON = "the runtime stopped (crashed or was killed) while this message was processed"
LEASE_TTL = 120.0  # a mailbox lease unless `--lease` (the mail sender's LOCK_TTL)
SWEEP_INTERVAL = 2.0  # how often a node looks for nodes that are gone and their MPL entries
NOTIFIER_LEASE = "runtime:notifier"
NOTIFIER_TTL = 60.0
PURGE_INTERVAL = 3600.0

_log = structlog.get_logger("flowrt.runtime")


class Runtime:
    def __init__(
        self,
        tenant: Tenant,
        *,
        grace: float = 30.0,
        http: str | None = None,
        tls_alias: str | None = None,
        node: str | None = None,
        lease: float | None = None,
        log_json: bool | None = None,
        starter: WorkerStarter | None = None,
    ) -> None:
        self.tenant = tenant
        self.log_json = log_json  # for the worker processes of flows with `workers N`
        self.starter = starter  # forks them (see starter.py); None: they start as processes
        self.grace = grace
        self._monitor = Monitor(tenant, http, tls_alias=tls_alias)
        self.shared = is_shared(tenant)
        self.node = node or (socket.gethostname() if self.shared else None)
        self.lease = lease
        self.instances: dict[str, FlowInstance] = {}
        self.stopping = asyncio.Event()
        self._lock = RuntimeLock(tenant, node=self.node if self.shared else None)
        self._status = RuntimeStatus(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=now_iso(),
            heartbeat_at=now_iso(),
        )
        self._dirty = True
        self._notifier: NotifierTask | None = None

    # ------------------------------------------------------------------ entry points

    async def run(self, *, once: bool = False, due: bool = False) -> int:
        """Run until stopped (or one poll each with ``once``, only of the flows whose
        schedule is due with ``due``); the exit code."""
        self._lock.acquire()
        try:
            self._open()
            try:
                self._install_signals()
                await self._monitor.start(self._live_states, lambda: not self.stopping.is_set())
                if once:
                    return await self._run_once(due=due)
                await self._serve()
                return 0
            finally:
                await self._shutdown()
        finally:
            self._lock.release()

    def _open(self) -> None:
        allow_open_files()
        use_small_tls_buffers()  # a connection per IDLE flow and per polling flow
        self.security = TenantSecurity.open(self.tenant)
        state = open_state(self.tenant)
        store = open_mpl(self.tenant)
        assert state is not None and store is not None  # create=True opens or raises
        self.state: StateBackend = state
        self.store: MplBackend = store
        self.deployments = open_deployments(self.tenant)
        self.state.lease_ttl = self.lease
        if self.node is not None and isinstance(self.state, PgStateDB):
            self.state.register_node(self.node)
            self.state.node = self.node  # its leases' owners start with the node's name
        # One runtime per tenant (the lock above), or per node name (the registry): what is
        # still unfinished of ours was left by one that died; its mails are still in their
        # mailboxes and are processed again. Several nodes share one MPL: what another node
        # is processing is not ours (the sweep closes a dead node's entries).
        abandoned = self.store.abandon_unfinished(
            ABANDONED_REASON, nodes=None if self.node is None else [self.node]
        )
        if abandoned:
            _log.warning("closed MPL entries a crash left unfinished", abandoned=abandoned)
        self.recorder = MplRecorder(self.store, level=LogLevel.INFO, node=self.node or "")
        self.adapters = Adapters()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._request_stop, sig)

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            _log.info("stopping", signal=sig.name, grace_seconds=self.grace)
            self.stopping.set()

    # ------------------------------------------------------------------ modes

    async def _run_once(self, *, due: bool) -> int:
        notifier = self._open_notifier()
        failures = 0
        now = dt.datetime.now(dt.UTC)
        for deployment in self.deployments.all():
            instance = self._instance(deployment, once=True)
            if not instance.start():
                failures += 1
                continue
            if due and not instance.due(now):
                _log.info("poll not due", flow=instance.name)
                self._write_status()
                continue
            result = await instance.poll_once()
            # a poll that did not run (a lock held elsewhere) is a poll that failed here
            if result is None or result.busy or instance.status.failed:
                failures += 1
            self._write_status()
        if notifier is not None:
            # ``run --once`` from cron: one notifier cycle after the polls, so that the
            # failures of this run (and due retries of earlier alerts) go out
            try:
                self.recorder.flush()  # the notifier reads what this run recorded
                await notifier.run_once()
            except Exception as exc:  # an alert that cannot go out must not fail the run
                _log.warning("notifier cycle failed", error=str(exc))
            finally:
                await asyncio.to_thread(notifier.close)
        return 1 if failures else 0

    def _open_notifier(self) -> Notifier | None:
        # imported here: the notifier sends mail itself, and a runtime whose tenant sends
        # no alerts should not load the SMTP adapter outside the seam
        from flowrt.notify.notifier import Notifier

        try:
            notifier = Notifier(self.tenant, self.security)
            notifier.prime()  # what this run logs is new, even on a tenant's first run
        except FlowrtError as exc:
            _log.warning("notifications off: the notification log cannot be opened", error=str(exc))
            return None
        return notifier

    async def _serve(self) -> None:
        _log.info("runtime started", tenant=str(self.tenant.root), pid=os.getpid())
        from flowrt.notify.notifier import start_notifier  # see _open_notifier

        if not self.shared:
            self._notifier = start_notifier(self.tenant, self.security)
        generation = -1
        last_beat = last_purge = last_sweep = 0.0
        heartbeat = NODE_HEARTBEAT if self.shared else HEARTBEAT
        while not self.stopping.is_set():
            reconciled = False
            try:
                current = self.deployments.generation()
                if current != generation:
                    await self._reconcile()
                    generation = current
                    reconciled = True
            except FlowrtError as exc:  # the store is away for a moment: the flows go on
                _log.warning("cannot read the deployments", error=str(exc), hint=exc.hint)
            now = time.monotonic()
            if self.shared and now - last_sweep > SWEEP_INTERVAL:
                last_sweep = now
                await asyncio.to_thread(self._sweep)
            if now - last_purge > PURGE_INTERVAL:
                last_purge = now
                await asyncio.to_thread(self._purge)
            # a deploy's outcome (STARTED, or ERROR at start) is written at once, for
            # `flowrt deploy` waiting on it; other changes within STATUS_GAP: with many flows
            # polling, some flow changes on every tick, and each write serializes every flow
            if (
                reconciled
                or (self._dirty and now - last_beat >= STATUS_GAP)
                or now - last_beat >= heartbeat
            ):
                for instance in self.instances.values():
                    instance.refresh()
                self._write_status()
                if self.shared:
                    await self._notifier_turn()
                last_beat = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), WATCH_INTERVAL)

    async def _notifier_turn(self) -> None:
        """On a shared store the nodes read one MPL: one of them sends the alerts, the one
        holding the notifier's lease; another takes it over when that node is gone."""
        from flowrt.notify.notifier import start_notifier  # see _open_notifier

        owner = f"{self.node}/notifier:{os.getpid()}"
        try:
            held, _ = self.state.acquire_lock(
                NOTIFIER_LEASE, owner, self.lease or NOTIFIER_TTL, info="notifier"
            )
        except FlowrtError as exc:  # the store is away: keep what we have
            _log.warning("cannot renew the notifier's lease", error=str(exc))
            return
        if held and self._notifier is None:
            self._notifier = start_notifier(self.tenant, self.security)
        elif not held and self._notifier is not None:
            await self._notifier.stop()
            self._notifier = None

    async def _reconcile(self) -> None:
        wanted = {d.name: d for d in self.deployments.all()}
        starting = 0
        for name in [n for n in self.instances if n not in wanted]:
            _log.info("undeploying", flow=name)
            await self.instances.pop(name).stop(self.grace)
            self._status.flows.pop(name, None)
        for name, deployment in wanted.items():
            current = self.instances.get(name)
            if current is not None and current.deployment.version == deployment.version:
                continue
            if current is not None:
                _log.info(
                    "replacing", flow=name, old=current.deployment.version, new=deployment.version
                )
                await current.stop(self.grace)
            instance = self._instance(deployment)
            if instance.start():
                instance.run(start_after=starting / START_RATE)
                starting += 1
        self._dirty = True

    def _instance(self, deployment: Deployment, *, once: bool = False) -> FlowInstance:
        instance = FlowInstance(
            deployment,
            security=self.security,
            recorder=self.recorder,
            state=self.state,
            adapters=self.adapters,
            on_change=self._changed,
            # one poll now (`--once`) polls the whole mailbox in this process
            workers=None if once else functools.partial(self._workers, deployment),
        )
        self.instances[deployment.name] = instance
        self._status.flows[deployment.name] = instance.status
        return instance

    def _changed(self) -> None:
        self._dirty = True

    def _workers(self, deployment: Deployment, count: int, hard_cap: float) -> WorkerGroup:
        """The worker processes of a flow with ``workers N`` (see workers.py)."""
        if not self.shared:
            expect_other_writers()  # the workers write the tenant's files beside this process
        return WorkerGroup(
            tenant=self.tenant.root,
            flow=deployment.name,
            version=deployment.version,
            count=count,
            grace=self.grace,
            hard_cap=hard_cap,
            lease=self.lease,
            log_json=self.log_json,
            abandon=lambda reason, nodes: self.store.abandon_unfinished(reason, nodes=nodes),
            on_change=self._changed,
            starter=self.starter,
            node=self.node if self.shared else None,
        )

    def _sweep(self) -> None:
        """Close ABANDONED the MPL entries that nodes which are gone left PROCESSING: gone
        means no heartbeat for as long as a mailbox lease lasts (their mailboxes are taken
        over then, and the mails processed again) or, on this host, its process is gone.
        Every node sweeps; the update is idempotent, and a node that was only slow writes
        its entry's real ending over it."""
        assert isinstance(self.state, PgStateDB)
        try:
            now = self.state.now()
            ttl = max(NODE_TTL, self.lease or LEASE_TTL)
            gone = [
                n.name for n in self.state.nodes() if n.name != self.node and not n.alive(now, ttl)
            ]
            closed = self.store.abandon_unfinished(ABANDONED_REASON, nodes=gone) if gone else 0
        except FlowrtError as exc:  # the store is away for a moment: next sweep
            _log.warning("cannot close the entries of nodes that are gone", error=str(exc))
            return
        if closed:
            _log.warning(
                "closed MPL entries that nodes which are gone left unfinished",
                abandoned=closed,
                nodes=gone,
            )

    def _purge(self) -> None:
        try:
            removed = self.store.purge_expired()
        except Exception as exc:  # a purge failure must not stop the flows
            _log.warning("MPL purge failed", error=str(exc))
            return
        if removed:
            _log.info("MPL purged", removed=removed)

    def _write_status(self) -> None:
        self._dirty = False
        for name, instance in self.instances.items():  # with workers: their counts added
            self._status.flows[name] = instance.reported()
        if self.node is not None and isinstance(self.state, PgStateDB):
            try:
                self.state.node_heartbeat(
                    self.node, json.loads(self._status.to_json()), stopped=self._status.stopping
                )
            except FlowrtError as exc:
                _log.warning("could not write the node status", error=str(exc))
            return
        try:
            write_status(self.tenant, self._status)
        except OSError as exc:
            _log.warning("could not write the runtime status", error=str(exc))

    def _live_states(self) -> dict[str, str]:
        return {name: i.reported().state for name, i in self.instances.items()}

    async def _shutdown(self) -> None:
        self._status.stopping = True
        await self._monitor.stop()
        if self._notifier is not None:
            await self._notifier.stop()
            if self.shared:
                with contextlib.suppress(FlowrtError):
                    self.state.release_lock(NOTIFIER_LEASE, f"{self.node}/notifier:{os.getpid()}")
        await asyncio.gather(
            *(i.stop(self.grace) for i in self.instances.values()), return_exceptions=True
        )
        with contextlib.suppress(Exception):
            await self.adapters.aclose()
        self.recorder.close()
        self.store.close()
        self._write_status()
        self.state.close()
        self.deployments.close()
        errors = [i.name for i in self.instances.values() if i.status.state == ERROR]
        _log.info("runtime stopped", flows_in_error=errors)


def allow_open_files() -> None:
    """Raise the soft limit of open files to the hard one: each IDLE flow and each polling
    flow between polls holds a connection, so a thousand flows need more than the 1,024 a
    login shell usually gets."""
    try:
        import resource
    except ImportError:  # not on this platform: the limit stays
        return
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
