"""The runtime process (``flowrt run``): every deployed flow, kept in step with deployments.

- One runtime per tenant (an exclusive lock); a second one refuses to start and says why.
- Deploys and undeploys are picked up within a second: the deployments' generation counter
  is checked every :data:`WATCH_INTERVAL`. A new version replaces the old one after the old
  one finished the mail in hand (the mailbox lock keeps the two from polling together).
- A flow that fails to start is in ERROR with its reason; the others run on.
- SIGTERM or Ctrl-C: polling stops, the mail in hand may finish within the grace period,
  what is still unfinished then is handed back (left unmarked in the mailbox, ABANDONED in
  the MPL), and the process exits.
- ``once``: one poll of each flow, then exit (for cron and tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import TYPE_CHECKING

import structlog

from flowrt.adapters.registry import Adapters
from flowrt.errors import FlowrtError
from flowrt.mpl.model import LogLevel
from flowrt.mpl.recorder import MplRecorder
from flowrt.mpl.store import MplStore
from flowrt.runtime.deployments import Deployment, Deployments
from flowrt.runtime.flow_instance import FlowInstance
from flowrt.runtime.monitor import Monitor
from flowrt.runtime.state import StateDB
from flowrt.runtime.status import (
    ERROR,
    HEARTBEAT,
    RuntimeLock,
    RuntimeStatus,
    now_iso,
    write_status,
)
from flowrt.security import TenantSecurity
from flowrt.tenant import Tenant

if TYPE_CHECKING:
    from flowrt.notify.notifier import Notifier, NotifierTask

WATCH_INTERVAL = 0.2
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
    ) -> None:
        self.tenant = tenant
        self.grace = grace
        self._monitor = Monitor(tenant, http, tls_alias=tls_alias)
        self.deployments = Deployments(tenant)
        self.instances: dict[str, FlowInstance] = {}
        self.stopping = asyncio.Event()
        self._lock = RuntimeLock(tenant)
        self._status = RuntimeStatus(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=now_iso(),
            heartbeat_at=now_iso(),
        )
        self._dirty = True
        self._notifier: NotifierTask | None = None

    # ------------------------------------------------------------------ entry points

    async def run(self, *, once: bool = False) -> int:
        """Run until stopped (or one poll each with ``once``); the exit code."""
        self._lock.acquire()
        try:
            self._open()
            try:
                self._install_signals()
                await self._monitor.start(self._live_states, lambda: not self.stopping.is_set())
                if once:
                    return await self._run_once()
                await self._serve()
                return 0
            finally:
                await self._shutdown()
        finally:
            self._lock.release()

    def _open(self) -> None:
        self.security = TenantSecurity.open(self.tenant)
        self.state = StateDB.open(self.tenant)
        self.store = MplStore(self.tenant.mpl_path)
        # one runtime per tenant (the lock above): what is still unfinished was left by one
        # that died; its mails are still in their mailboxes and are processed again
        abandoned = self.store.abandon_unfinished(
            "the runtime stopped (crashed or was killed) while this message was processed"
        )
        if abandoned:
            _log.warning("closed MPL entries a crash left unfinished", abandoned=abandoned)
        self.recorder = MplRecorder(self.store, level=LogLevel.INFO)
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

    async def _run_once(self) -> int:
        notifier = self._open_notifier()
        failures = 0
        for deployment in self.deployments.all():
            instance = self._instance(deployment)
            if not instance.start():
                failures += 1
                continue
            result = await instance.poll_once()
            if result is None or instance.status.failed:
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

        self._notifier = start_notifier(self.tenant, self.security)
        generation = -1
        last_beat = last_purge = 0.0
        while not self.stopping.is_set():
            current = self.deployments.generation()
            if current != generation:
                generation = current
                await self._reconcile()
            now = time.monotonic()
            if now - last_purge > PURGE_INTERVAL:
                last_purge = now
                await asyncio.to_thread(self._purge)
            if self._dirty or now - last_beat >= HEARTBEAT:
                for instance in self.instances.values():
                    instance.refresh()
                self._write_status()
                last_beat = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), WATCH_INTERVAL)

    async def _reconcile(self) -> None:
        wanted = {d.name: d for d in self.deployments.all()}
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
                instance.run()
        self._dirty = True

    def _instance(self, deployment: Deployment) -> FlowInstance:
        instance = FlowInstance(
            deployment,
            security=self.security,
            recorder=self.recorder,
            state=self.state,
            adapters=self.adapters,
            on_change=self._changed,
        )
        self.instances[deployment.name] = instance
        self._status.flows[deployment.name] = instance.status
        return instance

    def _changed(self) -> None:
        self._dirty = True

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
        try:
            write_status(self.tenant, self._status)
        except OSError as exc:
            _log.warning("could not write the runtime status", error=str(exc))

    def _live_states(self) -> dict[str, str]:
        return {name: i.status.state for name, i in self.instances.items()}

    async def _shutdown(self) -> None:
        self._status.stopping = True
        await self._monitor.stop()
        if self._notifier is not None:
            await self._notifier.stop()
        await asyncio.gather(
            *(i.stop(self.grace) for i in self.instances.values()), return_exceptions=True
        )
        with contextlib.suppress(Exception):
            await self.adapters.aclose()
        self.recorder.close()
        self.store.close()
        self.state.close()
        self._write_status()
        errors = [i.name for i in self.instances.values() if i.status.state == ERROR]
        _log.info("runtime stopped", flows_in_error=errors)
