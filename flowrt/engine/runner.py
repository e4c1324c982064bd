"""The pipeline runner: one message through the compiled steps and out to the receivers.

Usage (the runtime, the SMTP receiver, ``flowrt simulate``)::

    pipeline = compile_flow(load_flow("flows/mail.flow"))          # once, at load
    runner = Runner(pipeline, recorder, deliver, version="3")       # deliver(name, exchange)
    result = await runner.process(exchange)                         # per message
    result.status                                                   # COMPLETED, FAILED, ...

Why it is shaped like this (after structlog's processor chain): a pipeline is a tuple of plain
functions and the loop that calls them is a few lines, so the per-message cost is the steps'
own work plus one MPL step record each. Steps are synchronous; only delivery (``deliver``)
and the wait between retries (``sleep``) are awaited.

One attempt is one MPL run: the steps, then delivery to the chosen receivers, each recorded
(delivery as step ``receiver NAME`` with the receiver block's line). A failure in either is
retried per the flow's ``on-error`` policy, each attempt from a fresh copy of the exchange as
it came in; a receiver that already accepted the message in an earlier attempt is not sent
to again (recorded as SKIPPED), so a retry never duplicates mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from flowrt.engine.compiled import CompiledStep, Filtered, MessageLog, Routed, Split
from flowrt.engine.exchange import Exchange, new_message_id
from flowrt.engine.pipeline import Pipeline
from flowrt.errors import (
    HandedBack,
    MessagingException,
    ProcessingError,
    StepException,
    is_retryable,
)
from flowrt.mpl.model import MplStatus, StepStatus
from flowrt.mpl.recorder import EntryHandle, MplRecorder, RunHandle

__all__ = ["Clock", "Deliver", "Observer", "Result", "Runner", "Sleep", "StepEvent"]

Deliver = Callable[[str, Exchange], Awaitable[None]]
"""``await deliver(receiver_name, exchange)``: send the exchange through that receiver.
Raise a ProcessingError (a MessagingException chain) when it fails; anything else is wrapped
in a MessagingException, retryable when :func:`flowrt.errors.is_retryable` says so."""

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
"""Epoch seconds, like :func:`time.time` (the MPL stores what it returns)."""

_COMPLETED = StepStatus.COMPLETED
_FAILED = StepStatus.FAILED
_FILTERED = StepStatus.FILTERED
_SKIPPED = StepStatus.SKIPPED


@dataclasses.dataclass(frozen=True, slots=True)
class StepEvent:
    """What an observer hears after each step and delivery (``flowrt simulate`` prints them).
    ``note`` says what a route, filter, split or skipped delivery decided."""

    run: int
    step_id: str
    line: str
    branch: str
    status: StepStatus
    start: float
    stop: float
    note: str = ""
    error: BaseException | None = None

    @property
    def duration_ms(self) -> float:
        return (self.stop - self.start) * 1000.0


Observer = Callable[[StepEvent], None]


class Result(NamedTuple):
    """How processing one message ended (a named tuple: one is made per message).

    ``sent`` counts deliveries accepted (in any attempt); ``note`` says why nothing was sent
    when a filter, the router or a split without attachments stopped the message.
    ``error`` is the last error (kept even when a later attempt succeeded).
    """

    message_id: str
    status: MplStatus
    runs: int
    sent: int = 0
    note: str | None = None
    error: ProcessingError | None = None
    failed_step: str | None = None
    entry: EntryHandle | None = None
    """The message's MPL entry, for what the caller records after the run (a dead letter,
    per-recipient delivery state)."""

    @property
    def ok(self) -> bool:
        return self.status is MplStatus.COMPLETED


class _AttemptFailed(Exception):
    """An attempt failed at ``step`` with ``error``: unwinds a split's branches at once."""

    def __init__(self, error: ProcessingError, step: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.step = step


class Runner:
    """Runs messages through ``pipeline``, recording each in ``recorder`` at the flow's level.

    ``deliver`` sends to a receiver; ``sleep`` waits between retries and ``clock`` times steps
    (both injectable, so tests and simulate never wait real intervals); ``observer`` hears of
    every step; ``simulation`` marks the MPL entries as made by ``flowrt simulate``.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        recorder: MplRecorder,
        deliver: Deliver,
        *,
        version: str = "",
        simulation: bool = False,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        observer: Observer | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.recorder = recorder
        self.version = version
        self._deliver = deliver
        self._simulation = simulation
        self._sleep = sleep
        self._clock = clock
        self._observer = observer
        self._steps: tuple[CompiledStep, ...] = pipeline.steps
        self._policy = pipeline.flow.on_error

    # ------------------------------------------------------------------ per message

    async def process(self, exchange: Exchange, *, application_id: str | None = None) -> Result:
        """Process one message to its final status. The runner owns ``exchange`` from here:
        without a retry policy it is changed in place (no copy is needed then)."""
        pipeline = self.pipeline
        clock = self._clock
        exchange.flow_name = pipeline.flow.name
        exchange.flow_version = self.version
        entry = self.recorder.begin(
            exchange.message_id,
            exchange.correlation_id,
            pipeline.flow.name,
            self.version,
            pipeline.sender,
            pipeline.receiver_descriptions,
            application_id=application_id,
            simulation=self._simulation,
            level=pipeline.level,
            start=clock(),
            subject=exchange.headers.get("Subject") or "",
            mail_from=exchange.headers.get("From") or "",
        )
        policy = self._policy
        delivered: set[tuple[str, str]] | None = None if policy is None else set()
        attempt = 0
        last: _AttemptFailed | None = None
        try:
            while True:
                attempt += 1
                run = entry.start_run(start=clock())
                try:
                    notes, sent = await self._attempt(
                        exchange if policy is None else exchange.copy(), entry, run, delivered
                    )
                    break
                except _AttemptFailed as failure:
                    last = failure
                    if isinstance(failure.error.__cause__ or failure.error, HandedBack):
                        # another node owns the mail now: it records the outcome
                        entry.fail(failure.error, MplStatus.ABANDONED, failure.step)
                        return Result(
                            exchange.message_id,
                            MplStatus.ABANDONED,
                            attempt,
                            len(delivered) if delivered else 0,
                            error=failure.error,
                            failed_step=failure.step,
                        )
                    if (
                        policy is None
                        or attempt > policy.retries
                        or not is_retryable(failure.error)
                    ):
                        status = MplStatus.ESCALATED if policy is None else MplStatus.FAILED
                        entry.fail(failure.error, status, failure.step)
                        sent = len(delivered) if delivered else 0
                        return Result(
                            exchange.message_id,
                            status,
                            attempt,
                            sent,
                            error=failure.error,
                            failed_step=failure.step,
                            entry=entry,
                        )
                    run.finish(MplStatus.RETRY, stop=clock())
                    entry.fail(failure.error, MplStatus.RETRY, failure.step)
                    await self._sleep(policy.delay(attempt))
        except asyncio.CancelledError:
            # Shut down mid-message: the mail stays in the mailbox and is fetched again.
            entry.complete(MplStatus.ABANDONED)
            raise
        note = None
        if sent == 0 and notes:
            note = "; ".join(notes)
            entry.filtered(note)
        else:
            entry.complete(MplStatus.COMPLETED, end=clock())
        if last is None:
            return Result(
                exchange.message_id, MplStatus.COMPLETED, attempt, sent, note, entry=entry
            )
        return Result(
            exchange.message_id,
            MplStatus.COMPLETED,
            attempt,
            sent,
            note,
            error=last.error,
            failed_step=last.step,
            entry=entry,
        )

    def record_unreadable(
        self,
        error: BaseException,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        application_id: str | None = None,
    ) -> Result:
        """Record a message that never became an exchange (a mail that cannot be read):
        one run whose only step, ``sender ADAPTER``, failed with ``error``."""
        pipeline = self.pipeline
        clock = self._clock
        message_id = message_id or new_message_id()
        start = clock()
        entry = self.recorder.begin(
            message_id,
            correlation_id or message_id,
            pipeline.flow.name,
            self.version,
            pipeline.sender,
            pipeline.receiver_descriptions,
            application_id=application_id,
            simulation=self._simulation,
            level=pipeline.level,
            start=start,
        )
        run = entry.start_run(start=start)
        sender = pipeline.flow.sender
        step_id = f"sender {sender.adapter}" if sender else "sender"
        line = str(sender.pos.line) if sender else ""
        stop = clock()
        run.step(step_id, line, "", _FAILED, start, stop, error)
        if self._observer is not None:
            self._observer(
                StepEvent(run.number, step_id, line, "", _FAILED, start, stop, "", error)
            )
        failure = error if isinstance(error, ProcessingError) else _wrap_sender_error(error)
        failed_step = f"{step_id} (line {line})" if line else step_id
        status = MplStatus.ESCALATED if self._policy is None else MplStatus.FAILED
        entry.fail(failure, status, failed_step)
        return Result(message_id, status, 1, error=failure, failed_step=failed_step, entry=entry)

    # ------------------------------------------------------------------ one attempt

    async def _attempt(
        self,
        ex: Exchange,
        entry: EntryHandle,
        run: RunHandle,
        delivered: set[tuple[str, str]] | None,
    ) -> tuple[list[str], int]:
        """Run the steps, then deliver what came out. Returns (notes, deliveries accepted)."""
        plan: list[tuple[Exchange, tuple[str, ...]]] = []
        notes: list[str] = []
        self._walk(ex, 0, self.pipeline.receivers, entry, run, plan, notes)
        clock = self._clock
        deliver = self._deliver
        observer = self._observer
        delivery_steps = self.pipeline.delivery_steps
        sent = 0
        for target, receivers in plan:
            branch = target.branch
            for name in receivers:
                step_id, line = delivery_steps[name]
                start = clock()
                if delivered is not None and (branch, name) in delivered:
                    run.step(step_id, line, branch, _SKIPPED, start, start)
                    if observer is not None:
                        note = "already delivered in an earlier run"
                        observer(
                            StepEvent(
                                run.number, step_id, line, branch, _SKIPPED, start, start, note
                            )
                        )
                    sent += 1
                    continue
                try:
                    await deliver(name, target)
                except Exception as exc:
                    stop = clock()
                    error = _delivery_error(name, exc)
                    run.step(step_id, line, branch, _FAILED, start, stop, error)
                    if observer is not None:
                        observer(
                            StepEvent(
                                run.number, step_id, line, branch, _FAILED, start, stop, "", error
                            )
                        )
                    raise _AttemptFailed(error, f"{step_id} (line {line})") from None
                stop = clock()
                run.step(step_id, line, branch, _COMPLETED, start, stop)
                if observer is not None:
                    observer(StepEvent(run.number, step_id, line, branch, _COMPLETED, start, stop))
                if delivered is not None:
                    delivered.add((branch, name))
                sent += 1
        return notes, sent

    def _walk(
        self,
        ex: Exchange,
        first: int,
        receivers: tuple[str, ...],
        entry: EntryHandle,
        run: RunHandle,
        plan: list[tuple[Exchange, tuple[str, ...]]],
        notes: list[str],
    ) -> None:
        """Run steps ``first``.. on ``ex``; what should be sent is appended to ``plan``, why
        nothing is sent to ``notes``. A split walks the rest once per branch."""
        clock = self._clock
        observer = self._observer
        steps = self._steps
        log: MessageLog = entry
        traces = entry.traces
        branch = ex.branch
        start = clock()
        for index in range(first, len(steps)):
            function, step_id, line = steps[index]
            try:
                outcome = function(ex, log)
            except Exception as exc:
                stop = clock()
                run.step(step_id, line, branch, _FAILED, start, stop, exc, _content(ex, traces))
                if observer is not None:
                    observer(
                        StepEvent(run.number, step_id, line, branch, _FAILED, start, stop, "", exc)
                    )
                raise _AttemptFailed(
                    _step_error(step_id, line, exc), f"{step_id} (line {line})"
                ) from None
            stop = clock()
            if outcome is None:
                content = (ex.headers.items(), ex.text) if traces else None
                run.step(step_id, line, branch, _COMPLETED, start, stop, None, content)
                if observer is not None:
                    observer(StepEvent(run.number, step_id, line, branch, _COMPLETED, start, stop))
                start = stop
                continue
            if isinstance(outcome, Routed):
                line = outcome.line
            status = _FILTERED if isinstance(outcome, Filtered) else _COMPLETED
            run.step(step_id, line, branch, status, start, stop, None, _content(ex, traces))
            if observer is not None:
                observer(
                    StepEvent(run.number, step_id, line, branch, status, start, stop, outcome.note)
                )
            if isinstance(outcome, Routed) and outcome.receivers:
                receivers = outcome.receivers
                start = stop
                continue
            if isinstance(outcome, Split) and outcome.branches:
                for branch_exchange in outcome.branches:
                    self._walk(branch_exchange, index + 1, receivers, entry, run, plan, notes)
            else:  # filtered, no route matched, nothing to split: this way ends here
                notes.append(_in_branch(branch, outcome.note))
            return
        if receivers:
            plan.append((ex, receivers))
        else:
            notes.append(_in_branch(branch, "the flow has no receiver"))


def _content(ex: Exchange, traces: bool) -> tuple[list[tuple[str, str]], str] | None:
    """The message after a step, for the MPL at ``trace`` only (built lazily: it is costly)."""
    return (ex.headers.items(), ex.text) if traces else None


def _in_branch(branch: str, note: str) -> str:
    return f"{branch}: {note}" if branch else note


def _step_error(step_id: str, line: str, exc: Exception) -> StepException:
    """``StepException: script m:f failed (line 23)`` caused by what the step raised, so the
    chain shows the step's own exception. Retried only if a flowrt error says it may be."""
    retryable = exc.retryable if isinstance(exc, ProcessingError) else False
    error = StepException(f"{step_id} failed (line {line})", retryable=retryable)
    error.__cause__ = exc
    return error


def _delivery_error(name: str, exc: Exception) -> ProcessingError:
    """A receiver's own MessagingException chain as it is; anything else wrapped in one."""
    if isinstance(exc, ProcessingError):
        return exc
    error = MessagingException(f"receiver {name} failed", retryable=is_retryable(exc))
    error.__cause__ = exc
    return error


def _wrap_sender_error(exc: BaseException) -> ProcessingError:
    error = MessagingException("the mail could not be read", retryable=False)
    error.__cause__ = exc
    return error
