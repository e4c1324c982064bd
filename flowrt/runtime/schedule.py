"""When a source polls: ``poll every``, ``daily at``, ``cron``, or ``idle`` (a held session),
with backoff after failures. The source does one poll (or one session); this module decides
when the next one runs, and never lets a failure end the loop.

``poll every`` flows poll once at start, then on a grid shifted by a random phase within the
interval: a runtime started with hundreds of ``every 1m`` flows would otherwise poll them all
in the same second each minute (a thundering herd on the mail server and on the state DB).
The phase only ever shortens the first gap, so no flow waits longer than its interval. A
poll that stopped at ``max-messages`` with mail left (``more``) is followed by the next at
once: a backlog is not worked off ``max-messages`` per interval.

:func:`is_due` answers ``flowrt run --once --due``: has a scheduled run passed since the
flow's last poll (recorded in the state DB)?
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import time
import zoneinfo

from flowrt.adapters.registry import Cron, Daily, Every, Schedule, Source

__all__ = [
    "DAILY_RETRY_CAP",
    "Backoff",
    "is_due",
    "next_daily_run",
    "next_run",
    "run_on_schedule",
    "sleep_unless_stopped",
]

DAILY_RETRY_CAP = 15 * 60.0


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between failed attempts: ``initial * factor**(n-1)``, at most ``maximum``,
    with some jitter so that pollers of one server do not reconnect in step."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, failures: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


async def run_on_schedule(
    source: Source,
    stop: asyncio.Event | None = None,
    *,
    backoff: Backoff | None = None,
    start_after: float = 0.0,
) -> None:
    """Poll as the source's schedule says until ``stop`` is set (or cancelled), the first
    time after ``start_after`` seconds. Failures are the source's to record (its health);
    they are retried with backoff, never raised."""
    stop = stop or asyncio.Event()
    backoff = backoff or Backoff()
    schedule = source.schedule
    if start_after > 0 and await sleep_unless_stopped(stop, start_after):
        return
    phase = _phase(schedule)
    while not stop.is_set():
        try:
            if schedule.kind == "idle":
                delay = await source.session(stop)
            else:
                outcome = await source.poll_once()
                delay = _until_next_poll(schedule, phase)
                if schedule.kind == "every" and getattr(outcome, "more", False):
                    delay = 0.0  # it stopped at max-messages with mail left: at once
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = backoff.delay(source.health.consecutive_failures)
            if schedule.kind == "every":
                delay = min(delay, schedule.interval.total_seconds())
            elif schedule.kind in ("daily", "cron"):
                delay = min(delay, DAILY_RETRY_CAP)
        if (delay or schedule.kind != "idle") and await sleep_unless_stopped(stop, delay):
            return


def _phase(schedule: Schedule) -> float:
    """Where on the clock this source's ``every`` grid sits (monotonic seconds)."""
    if schedule.kind != "every":
        return 0.0
    return time.monotonic() + random.uniform(0, schedule.interval.total_seconds())


def _until_next_poll(schedule: Every | Daily | Cron, phase: float) -> float:
    if schedule.kind == "every":
        interval = schedule.interval.total_seconds()
        # the next point of the grid ``phase + k * interval`` that is still ahead
        return (phase - time.monotonic()) % interval
    now = dt.datetime.now(dt.UTC)
    return (next_run(schedule, now) - now).total_seconds()


def next_run(schedule: Every | Daily | Cron, after: dt.datetime) -> dt.datetime:
    """When a poll after one at ``after`` (aware) is due, as aware UTC."""
    if schedule.kind == "every":
        return after.astimezone(dt.UTC) + schedule.interval
    if schedule.kind == "daily":
        return next_daily_run(after, schedule)
    from flowrt import cron  # croniter only for flows that use cron

    return cron.next_run(schedule.expression, schedule.tz, after)


def is_due(schedule: Schedule, last_poll: float | None, failures: int, now: dt.datetime) -> bool:
    """Is a poll due at ``now`` for a flow last polled at ``last_poll`` (epoch seconds;
    None: never)? A flow whose last poll failed is due again, and ``idle`` flows, having
    no schedule, always are."""
    if schedule.kind == "idle" or last_poll is None or failures:
        return True
    last = dt.datetime.fromtimestamp(last_poll, dt.UTC)
    return next_run(schedule, last) <= now


def next_daily_run(now: dt.datetime, poll: Daily) -> dt.datetime:
    """The next ``daily at HH:MM [tz]`` after ``now`` (an aware datetime)."""
    zone = zoneinfo.ZoneInfo(poll.tz) if poll.tz else dt.UTC
    local = now.astimezone(zone)
    candidate = dt.datetime.combine(local.date(), poll.at, tzinfo=zone)
    if candidate <= local:
        candidate = dt.datetime.combine(local.date() + dt.timedelta(days=1), poll.at, tzinfo=zone)
    return candidate.astimezone(dt.UTC)


async def sleep_unless_stopped(stop: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds or until ``stop``; True when stopped."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay))
    return stop.is_set()
