"""One deployed flow at work: its compiled pipeline, its receivers, and its sender's source.

The source (a mail poller, for the mail adapter) hands each exchange to
:meth:`FlowInstance.handle`, which runs it through the engine; the origin (the mailbox) is
changed only when that returns True (the flow finished with it). Sources and receivers come
from the adapter registry; this module names no protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from flowrt import metrics
from flowrt.adapters.registry import Adapters, Delivery, PollOutcome, Source, SourceHealth
from flowrt.dsl.model import DEFAULT_POLICY, Flow, RetryPolicy
from flowrt.engine.exchange import Exchange
from flowrt.engine.runner import Result, Runner
from flowrt.errors import FlowError, FlowrtError, find_hint, summary
from flowrt.mpl.model import MplStatus
from flowrt.mpl.recorder import MplRecorder
from flowrt.recipients import LEDGER, RecipientLedger
from flowrt.runtime.deliveries import DeliveryWriter
from flowrt.runtime.deployments import Deployment
from flowrt.runtime.ending import (
    SOURCE_PROPERTY,
    dead_letter_exchange,
    dead_letter_failed,
    failure_text,
    mark_dead,
    record_recipients,
    source_of,
    verdict_for,
)
from flowrt.runtime.leases import check_current_lease
from flowrt.runtime.schedule import is_due, run_on_schedule
from flowrt.runtime.status import ERROR, STARTED, STARTING, STOPPED, FlowStatus, now_iso
from flowrt.runtime.wiring import wire
from flowrt.runtime.workers import WorkerGroup
from flowrt.security import TenantSecurity
from flowrt.source_state import SOURCE_DELIVERED, UNREADABLE, Partition, Verdict
from flowrt.store.api import StateBackend

_log = structlog.get_logger("flowrt.runtime")


class FlowInstance:
    """A deployment brought to life; ``start`` may fail (the flow is then in ERROR)."""

    def __init__(
        self,
        deployment: Deployment,
        *,
        security: TenantSecurity,
        recorder: MplRecorder,
        state: StateBackend,
        adapters: Adapters,
        on_change: Callable[[], None] = lambda: None,
        partition: Partition | None = None,
        workers: Callable[[int, float], WorkerGroup] | None = None,
    ) -> None:
        """``partition``: in a worker process, its share of the mailbox. ``workers``: in the
        runtime, makes the worker processes of a flow with ``workers N`` (from N and the
        hard cap of a stop); None polls the whole mailbox here (``run --once``)."""
        self.deployment = deployment
        self.status = FlowStatus(deployment.name, deployment.version)
        self._security = security
        self._recorder = recorder
        self._state = state
        self._deliveries = DeliveryWriter(state)
        self._adapters = adapters
        self._on_change = on_change
        self._receivers: dict[str, Delivery] = {}
        self._poller: Source | None = None
        self._partition = partition
        self._make_workers = workers
        self._workers: WorkerGroup | None = None
        self._runner: Runner | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._in_flight = 0
        self._start_failed = False
        self._seen: tuple[object, ...] = ()  # the inputs of the last refresh
        self._hard_cap = 65.0
        self._policy: RetryPolicy = DEFAULT_POLICY
        self._log = _log.bind(flow=deployment.name, version=deployment.version)

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> bool:
        """Build everything the flow needs; False (and state ERROR) when that fails."""
        self._set(STARTING)
        try:
            flow = self.deployment.load()
            self._build(flow)
        except FlowrtError as exc:
            self._start_failed = True
            self._set(ERROR, reason=summary(exc), hint=find_hint(exc))
            self._log.error("flow failed to start", error=summary(exc), hint=find_hint(exc))
            return False
        self._set(STARTED)
        self._log.info("flow started")
        return True

    def _build(self, flow: Flow) -> None:
        if flow.sender is None:  # the validator requires one; a deployment always has it
            raise FlowError(f"flow {flow.name} has no sender")
        wired = wire(
            flow,
            recorder=self._recorder,
            adapters=self._adapters,
            security=self._security,
            version=str(self.deployment.version),
            folder=self.deployment.scripts_dir or Path(self.deployment.file).parent,
            # a node paused past its mailbox lease hands the mail back instead of sending
            # what the node that took the mailbox over sends too
            guard=check_current_lease,
        )
        self._receivers = wired.deliveries
        self._runner = wired.runner
        self._policy = flow.on_error or DEFAULT_POLICY
        sender = self._adapters[flow.sender.adapter]
        timeouts = [sender.timeout_seconds(flow.sender)] + [
            self._adapters[r.adapter].timeout_seconds(r) for r in flow.receivers
        ]
        self._hard_cap = 2 * max(timeouts) + 5
        partition = self._partition
        count = sender.workers(flow.sender)
        if partition is None and count > 1 and self._make_workers is not None:
            self._workers = self._make_workers(count, self._hard_cap)
            partition = Partition(0, count)
        self._poller = sender.source(
            flow.sender,
            self._security,
            _Handler(self),
            self._state,
            name=flow.name,
            partition=partition,
        )
        if hasattr(self._poller, "on_health"):
            # a failure or a recovery makes the runtime write the status soon (refreshing
            # every flow then, so that what it serves and the file agree); a poll that only
            # moved the poll times waits for the next heartbeat
            self._poller.on_health = lambda: self._on_change()

    def run(self, *, start_after: float = 0.0) -> None:
        """Start polling on the flow's schedule (in the background), the first poll or
        session after ``start_after`` seconds."""
        if self._poller is None or self._task is not None:
            return
        self._task = asyncio.ensure_future(self._run(start_after))

    async def _run(self, start_after: float) -> None:
        assert self._poller is not None
        if self._workers is not None:
            self._workers.start()
            await self._workers.started()
        await run_on_schedule(self._poller, self._stop, start_after=start_after)

    def due(self, now: dt.datetime) -> bool:
        """Whether the flow's schedule has a run due since its last recorded poll."""
        if self._poller is None:
            return False
        health = self._poller.health
        return is_due(self._poller.schedule, health.last_poll, health.consecutive_failures, now)

    async def poll_once(self) -> PollOutcome | None:
        if self._poller is None:
            return None
        try:
            return await self._poller.poll_once()
        except FlowrtError as exc:
            self.status.last_error = summary(exc)
            self.status.last_hint = find_hint(exc) or ""
            self._log.error("poll failed", error=summary(exc), hint=find_hint(exc))
            return None
        finally:
            self.refresh()

    async def stop(self, grace: float) -> None:
        """Stop polling and hand back every mail not yet started (the mailbox keeps it
        unmarked); the mail in flight may finish within ``grace`` seconds.

        A mail still in flight after that is cancelled only past a hard cap: cancelling it
        between "the SMTP server accepted it" and "the sender recorded that" would send it
        twice after a restart, so it gets its receivers' timeouts to finish first.
        """
        self._stop.set()
        workers = None
        if self._workers is not None:  # they stop beside this process's own partition
            workers = asyncio.ensure_future(self._workers.stop(grace))
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=grace)
            if not done and self._in_flight:
                self._log.warning(
                    "grace period over; letting the mail in flight finish",
                    grace_seconds=grace,
                    cap_seconds=self._hard_cap,
                )
                done, _ = await asyncio.wait({self._task}, timeout=self._hard_cap)
            if not done:
                self._log.warning("handing back the mail in flight (ABANDONED)")
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(FlowrtError):  # already logged by the loop's turn
            self._deliveries.flush()
        if self._poller is not None:
            with contextlib.suppress(Exception):
                await self._poller.aclose()  # the connection kept between polls
        for receiver in self._receivers.values():
            with contextlib.suppress(Exception):
                await receiver.aclose()
        if workers is not None:
            await workers
        if self.status.state != ERROR:
            self._set(STOPPED)

    # ------------------------------------------------------------------ per message

    async def handle(self, exchange: Exchange, *, flush: bool = True) -> Verdict:
        """Run one mail through the flow; the verdict says whether the flow finished with
        it, and if not, when to try again or that its attempts are over (see ending.py).
        ``flush=False``: the source calls :meth:`durable` before it records the verdict
        (once for the mails that end together)."""
        assert self._runner is not None
        if self._stop.is_set():
            # stopping: handed back, unmarked, for the next runtime to take; not an attempt
            return Verdict(False, error="the runtime is stopping")
        scope, key = source_of(exchange)
        ledger: RecipientLedger | None = None
        unreadable = exchange.properties.pop(UNREADABLE, None)
        if scope:
            stored = exchange.properties.pop(SOURCE_DELIVERED, True) is not False
            rows = self._deliveries.rows(scope, key, stored=stored)
            if rows and unreadable is None and self._completed_before(scope, key):
                return Verdict(True)
            ledger = RecipientLedger(rows, save=self._deliveries.saver(scope, key))
            exchange.properties[LEDGER] = ledger
        original = exchange.copy() if self._policy.dead_letter.kind == "receiver" else exchange
        self._in_flight += 1
        try:
            # every log line while this mail is processed (steps, receivers) names it
            with structlog.contextvars.bound_contextvars(
                flow=self.name, message_id=exchange.message_id
            ):
                started = time.monotonic()
                if isinstance(unreadable, BaseException):
                    result = self._runner.record_unreadable(
                        unreadable,
                        message_id=exchange.message_id,
                        application_id=exchange.properties.get("mail.message_id") or None,
                    )
                    _record_unreadable(result, exchange)
                else:
                    result = await self._runner.process(exchange)
                elapsed = time.monotonic() - started
                self._log_result(result, elapsed)
                metrics.message_done(self.name, result.status.value, elapsed)
                record_recipients(result.entry, ledger)
                if scope and result.entry is not None:
                    result.entry.custom_property(SOURCE_PROPERTY, f"{scope} {key}")
                verdict = await self._verdict(result, original, unreadable is not None)
        finally:
            self._in_flight -= 1
        if verdict.ok:
            self.status.completed += 1
            self.status.last_error = ""  # the flow works again; the MPL keeps the failure
            self.status.last_hint = ""
        else:
            self.status.failed += 1
            if result.error is not None:
                self.status.last_error = summary(result.error)
                self.status.last_hint = find_hint(result.error) or ""
        if flush or not verdict.ok:  # failures and dead letters: as one at a time did
            self._durable()
        self.refresh()
        return verdict

    def _completed_before(self, scope: str, key: str) -> bool:
        """Did an earlier attempt of this mail complete, though its record never came?

        The MPL entry is made durable before the source's record (the order rule), so a
        node killed between the two leaves a COMPLETED entry for a mail that is handed over
        again. Only a mail that already has deliveries is looked up (its receivers sent it
        before), so new mail costs nothing; such a mail is done: running it again would
        send to no one and only add a second final entry."""
        try:
            found = self._recorder.store.list_entries(
                status=MplStatus.COMPLETED,
                properties=[(SOURCE_PROPERTY, f"{scope} {key}")],
                limit=1,
            )
        except FlowrtError as exc:  # then run it: the ledger still keeps the sends once
            self._log.warning("MPL lookup of an earlier attempt failed", error=summary(exc))
            return False
        if not found:
            return False
        self._log.info(
            "mail completed before the runtime stopped; recorded as done, not run again",
            earlier_entry=found[0].message_id,
            source=f"{scope} {key}",
        )
        return True

    async def _verdict(self, result: Result, original: Exchange, unreadable: bool) -> Verdict:
        if result.status is MplStatus.COMPLETED:
            return Verdict(True)
        policy = self._policy
        attempt = int(original.properties.get("mail.attempt", 1) or 1)
        over, retry_at = verdict_for(result, policy=policy, attempt=attempt, unreadable=unreadable)
        error = failure_text(result)
        if not over:
            return Verdict(False, retry_at=retry_at, error=error)
        dead = policy.dead_letter
        failed = dead_letter_failed(result.entry, dead, self._dead_letter_failed)
        if dead.kind == "receiver":
            try:
                await self._deliver(dead.target, dead_letter_exchange(original, result, attempt))
            except Exception as exc:
                failed(exc)
                return Verdict(False, retry_at=retry_at, error=error)
        mark_dead(result.entry, result, dead, attempt)
        self.status.dead_lettered += 1
        metrics.dead_letter()
        self._log.warning("message dead-lettered", place=dead.describe(), attempts=attempt)
        return Verdict(
            False,
            retry_at=retry_at,
            dead_letter=True,
            dead_letter_place=dead.kind,
            dead_letter_folder=dead.target,
            dead_letter_failed=lambda exc: self._after(failed, exc),
            error=error,
        )

    def _after(self, failed: Callable[[BaseException], None], exc: BaseException) -> None:
        failed(exc)
        self._durable()

    async def _deliver(self, name: str, exchange: Exchange) -> None:
        receiver = self._receivers.get(name)
        if receiver is None:
            raise FlowError(f"dead-letter receiver {name!r} is not a receiver of this flow")
        await receiver.deliver(exchange)

    def _dead_letter_failed(self, text: str) -> None:
        self.status.last_error = text
        self._log.error("dead letter failed; mail left in the mailbox", error=text)

    def durable(self) -> None:
        self._durable()

    def _durable(self) -> None:
        """The MPL entry is written before the source records the mail as done and changes
        the mailbox: a crash after that finds the entry, never a mail without one. So are
        the recipients' rows (usually written a loop turn after their SMTP reply already):
        raises when they cannot be, so that no record is written without them."""
        try:
            self._recorder.flush()
        except FlowrtError as exc:  # the mail is handled all the same; the writes retry
            self._log.warning("MPL write failed; retried in the background", error=summary(exc))
        self._deliveries.flush()

    def _log_result(self, result: Result, seconds: float) -> None:
        fields = {
            "status": result.status.value,
            "runs": result.runs,
            "sent": result.sent,
            "duration_ms": round(seconds * 1000, 1),
        }
        if result.note:
            fields["note"] = result.note
        if result.error is None:
            self._log.info("message processed", **fields)
        else:
            self._log.error(
                "message processed",
                **fields,
                failed_step=result.failed_step,
                error=summary(result.error),
                hint=find_hint(result.error),
            )

    # ------------------------------------------------------------------ status

    def reported(self) -> FlowStatus:
        """The flow's status as the runtime reports it: with ``workers N``, this process's
        partition and what its worker processes report, added up."""
        if self._workers is None:
            return self.status
        merged = dataclasses.replace(self.status)
        self._workers.merge(merged)
        return merged

    def refresh(self) -> None:
        """Take the poller's health into the status (and tell the runtime it changed)."""
        if self._poller is not None:
            # the runtime refreshes every flow before each status write (a thousand flows,
            # every second): a flow whose inputs did not change since is left as it is. A
            # source that counts its health's changes spares the copy of its health
            changes: int | None = getattr(self._poller, "health_changes", None)
            health = self._poller.health if changes is None else None
            seen = self._refresh_inputs(changes if health is None else health)
            if seen == self._seen:
                return
            health = health or self._poller.health
            self._take_health(health)
            self._seen = self._refresh_inputs(health if changes is None else changes)
        self.status.updated = now_iso()
        self._on_change()

    def _refresh_inputs(self, health: SourceHealth | int | None) -> tuple[object, ...]:
        """Everything :meth:`_take_health` reads (it gives the same status again for the
        same inputs); ``health`` is the source's count of its health's changes, or the
        health itself when the source does not count them."""
        assert self._poller is not None
        inputs: object = health
        if health is not None and not isinstance(health, int):
            inputs = (
                health.last_poll,
                health.last_success,
                health.consecutive_failures,
                health.last_error,
                getattr(health, "note", ""),
            )
        return (
            inputs,
            getattr(self._poller, "warning", ""),
            getattr(self._poller, "last_hint", ""),
            self.status.state,
            self.status.reason,
            self.status.last_error,
            self.status.last_hint,
            self._start_failed,
        )

    def _take_health(self, health: SourceHealth) -> None:
        assert self._poller is not None
        self.status.warning = str(getattr(self._poller, "warning", "") or "")
        if health.last_poll:
            self.status.last_poll = _iso(health.last_poll)
        if health.last_success:
            self.status.last_success = _iso(health.last_success)
        self.status.consecutive_failures = health.consecutive_failures
        # a poll skipped for a lock held elsewhere leaves a note, not a failure in a row
        skipped = getattr(health, "note", "")  # a source may not skip polls at all
        if health.last_error and (health.consecutive_failures or skipped):
            self.status.last_error = health.last_error
            self.status.last_hint = getattr(self._poller, "last_hint", "")
        # polls that keep failing put a running flow in ERROR (it retries with backoff);
        # the next good poll brings it back
        if self.status.state in (STARTED, ERROR) and not self._start_failed:
            if health.consecutive_failures:
                self.status.state = ERROR
                self.status.reason = (
                    f"{health.consecutive_failures} poll(s) failed in a row: {health.last_error}"
                )
            else:
                if self.status.state == ERROR:
                    self.status.last_error = ""  # recovered: `status` shows no stale error
                    self.status.last_hint = ""
                self.status.state = STARTED
                self.status.reason = ""

    def _set(self, state: str, *, reason: str = "", hint: str | None = None) -> None:
        self.status.state = state
        self.status.reason = reason + (f" (hint: {hint})" if hint else "")
        if reason:
            self.status.last_error = reason
            self.status.last_hint = hint or ""
        self.status.updated = now_iso()
        self._on_change()


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _record_unreadable(result: Result, exchange: Exchange) -> None:
    """What the MPL keeps of a mail that could not be read: its size and Message-ID."""
    entry = result.entry
    if entry is None:
        return
    entry.custom_property("mail.size", str(exchange.properties.get("mail.size", "")))
    message_id = exchange.properties.get("mail.message_id")
    if message_id:
        entry.custom_property("mail.message-id", str(message_id))


class _Handler:
    """What the source hands mails to: ``refused`` takes a mail that could not be read, so
    that it gets an MPL entry and a verdict like any other."""

    def __init__(self, instance: FlowInstance) -> None:
        self._instance = instance

    async def __call__(self, exchange: Exchange) -> Verdict:
        return await self._instance.handle(exchange)

    async def refused(self, exchange: Exchange) -> Verdict:
        return await self._instance.handle(exchange)

    async def ending(self, exchange: Exchange) -> Verdict:
        """Like calling the handler, but the MPL entry is made durable by :meth:`durable`,
        which the source calls before it writes the mail's record."""
        return await self._instance.handle(exchange, flush=False)

    def durable(self) -> None:
        self._instance.durable()

    @property
    def stopping(self) -> bool:
        """The source starts no more mails: what it has not started is handed back."""
        return self._instance.stopping
