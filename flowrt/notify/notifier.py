"""The notifier: the runtime's task that evaluates the rules and sends the alerts.

Why its own task, reading only what the runtime writes: a notification server that is down,
slow or refusing must never hold up a message. Reads of the tenant's databases run in a
thread; every send is bounded by a timeout; a failed send is recorded with its chain and
retried with backoff (and given up after :attr:`Backoff.tries`), while the flows go on.

Settings are read again on every cycle, so ``flowrt notify server set|remove`` and ``rule
add|remove`` take effect without a restart. Without a server nothing is sent (events are still
read, so that setting a server later does not flood anyone with history).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable

import structlog

from flowrt.adapters.mail.smtp.transaction import TransactionResult
from flowrt.errors import (
    FlowrtError,
    MessagingException,
    SendFailedException,
    find_hint,
    render_chain,
)
from flowrt.notify.compose import alert_text, build_mail, digest_text
from flowrt.notify.config import NotifyConfig, NotifyServer, load_config
from flowrt.notify.limiter import Limiter
from flowrt.notify.rules import Evaluator
from flowrt.notify.send import send_mail
from flowrt.notify.store import Attempt, Claim, NewAttempt, open_log
from flowrt.security import TenantSecurity
from flowrt.tenant import Tenant

__all__ = ["Backoff", "Notifier", "NotifierTask", "start_notifier"]

_log = structlog.get_logger("flowrt.notify")

PURGE_EVERY = 86400.0
KEEP = 30 * 86400.0
"""How long attempts (other than held ones awaiting their digest) stay in the log."""

Send = Callable[[NotifyServer, TenantSecurity, str, bytes], Awaitable[TransactionResult]]


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delay before try ``n + 1`` after ``n`` failed tries; None: give up."""

    initial: float = 30.0
    factor: float = 2.0
    maximum: float = 3600.0
    tries: int = 8

    def delay(self, failed_tries: int) -> float | None:
        if failed_tries >= self.tries:
            return None
        return min(self.maximum, self.initial * self.factor ** max(0, failed_tries - 1))


def _hold(server: NotifyServer | None) -> float:
    """How long an attempt being sent is left to its sender before another may take it
    (its sender died): longer than a send may take."""
    return 60.0 if server is None else server.timeout * 4 + 30.0


class Notifier:
    """Evaluates the rules and sends, one cycle per :meth:`run_once`; ``clock`` is injectable
    so that tests can step through days."""

    def __init__(
        self,
        tenant: Tenant,
        security: TenantSecurity,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        send: Send = send_mail,
    ) -> None:
        self.tenant = tenant
        self.security = security
        self.clock = clock
        self.backoff = backoff or Backoff()
        self._send = send
        log = open_log(tenant)
        assert log is not None  # create=True opens or raises
        self.log = log
        self.evaluator = Evaluator(tenant, security, self.log, clock=clock)
        self._down: FlowrtError | None = None
        self._next_purge = 0.0

    def close(self) -> None:
        self.evaluator.close()
        self.log.close()

    def prime(self) -> None:
        """See :meth:`Evaluator.prime`."""
        self.evaluator.prime()

    async def run_once(self) -> None:
        config = await asyncio.to_thread(load_config, self.tenant)
        evaluation = await asyncio.to_thread(self.evaluator.evaluate, config)
        server = config.server
        hold = _hold(server)
        alerts = []
        for rule, event in evaluation.matched:
            attempts: tuple[NewAttempt, ...] = ()
            if server is not None:
                subject, body = alert_text(rule, event)
                attempts = tuple(
                    NewAttempt(rule.name, event.trigger, event.key, to, subject, body, event.mpl_id)
                    for to in rule.recipients
                )
            alerts.append((f"{rule.name}|{event.key}", attempts))
        claim = Claim(
            marks=evaluation.marks,
            watch=evaluation.watch,
            unwatch=evaluation.unwatch,
            alerts=tuple(alerts),
        )
        # the cycle's decisions and the alerts they make, in one transaction: a sender that
        # dies before it leaves the next one to read them again, after it their attempts
        # are pending and due to whoever sends next
        created = []
        if claim.marks or claim.watch or claim.unwatch or claim.alerts:
            created = await asyncio.to_thread(self.log.claim, claim, now=self.clock(), hold=hold)
        self.evaluator.adopt(evaluation)
        if server is None:
            if evaluation.matched:
                _log.info("no notification server: alerts not sent", alerts=len(alerts))
            return
        # One server-wide failure (down, untrusted, refusing the login) per cycle is enough:
        # the other mails of the cycle wait for their retry instead of each waiting for it.
        self._down = None
        for attempt in created:
            await self._deliver(config, server, attempt)
        for attempt in await asyncio.to_thread(self.log.take_due, self.clock(), hold=hold):
            await self._deliver(config, server, attempt)
        if self.clock() >= self._next_purge:
            self._next_purge = self.clock() + PURGE_EVERY
            await asyncio.to_thread(self.log.purge, self.clock() - KEEP)

    async def _deliver(self, config: NotifyConfig, server: NotifyServer, attempt: Attempt) -> None:
        """Send ``attempt`` with the digest of what was held back, or hold it when the
        recipient had their mails for today."""
        now = self.clock()
        limiter = Limiter(self.log, config.limit)
        if not await asyncio.to_thread(limiter.allows, attempt.recipient, now):
            await asyncio.to_thread(self.log.mark_held, attempt.id, now=now)
            _log.info("alert held back", recipient=attempt.recipient, rule=attempt.rule)
            return
        if self._down is not None:
            await self._failed(attempt, self._down, tried=False)
            return
        held = await asyncio.to_thread(limiter.digest, attempt.recipient)
        held = [h for h in held if h.id != attempt.id]
        body = attempt.body + digest_text(held, config.limit)
        data = build_mail(server, attempt.recipient, attempt.subject, body, now=now)
        try:
            async with asyncio.timeout(server.timeout * 4):
                result = await self._send(server, self.security, attempt.recipient, data)
        except (FlowrtError, OSError, TimeoutError) as exc:
            error = exc
            if not isinstance(error, FlowrtError):
                error = MessagingException(
                    f"sending to the notification server {server.address} did not finish: "
                    f"{exc or type(exc).__name__}"
                )
                error.__cause__ = exc
            if not isinstance(error, SendFailedException):  # not this recipient: the server
                self._down = error
            await self._failed(attempt, error, tried=True)
            return
        await asyncio.to_thread(
            self.log.mark_sent,
            attempt.id,
            now=self.clock(),
            reply=result.data_reply,
            digested=[h.id for h in held],
        )
        _log.info("alert sent", recipient=attempt.recipient, rule=attempt.rule, held=len(held))

    async def _failed(self, attempt: Attempt, error: FlowrtError, *, tried: bool) -> None:
        tries = attempt.tries + 1 if tried else attempt.tries
        delay = self.backoff.delay(tries) if tries else self.backoff.initial
        await asyncio.to_thread(
            self.log.mark_failed,
            attempt.id,
            now=self.clock(),
            chain=render_chain(error),
            hint=find_hint(error) or "",
            next_try=None if delay is None else self.clock() + delay,
            tried=tried,
        )
        if tried:
            _log.warning(
                "alert not sent",
                recipient=attempt.recipient,
                rule=attempt.rule,
                tries=tries,
                retry_in=delay,
                error=render_chain(error),
            )

    async def run(self, stopping: asyncio.Event, *, interval: float = 2.0) -> None:
        while not stopping.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # nothing here may stop the runtime or its flows
                _log.warning("notifier cycle failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)


class NotifierTask:
    """The notifier running beside the flows; :meth:`stop` ends it within ``grace``."""

    def __init__(self, notifier: Notifier, *, interval: float) -> None:
        self.notifier = notifier
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(notifier.run(self._stopping, interval=interval))

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping.set()
        try:
            await asyncio.wait_for(self._task, grace)
        except TimeoutError:  # a send in progress: the attempt stays pending and is retried
            pass
        except Exception as exc:
            _log.warning("notifier stopped with an error", error=str(exc))
        await asyncio.to_thread(self.notifier.close)


def start_notifier(
    tenant: Tenant, security: TenantSecurity, *, interval: float = 2.0
) -> NotifierTask | None:
    """Start the notifier in the running loop; None (and a warning) when it cannot open its
    log, which must not keep the runtime from running the flows."""
    try:
        notifier = Notifier(tenant, security)
    except FlowrtError as exc:
        _log.warning("notifications off: the notification log cannot be opened", error=str(exc))
        return None
    return NotifierTask(notifier, interval=interval)
