"""When a source polls: ``poll every``, ``daily at``, or ``idle`` (a held session), with
backoff after failures. The source does one poll (or one session); this module decides
when the next one runs, and never lets a failure end the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import time
import zoneinfo

from flowrt.adapters.registry import Daily, Every, Source

__all__ = [
    "DAILY_RETRY_CAP",
    "Backoff",
    "next_daily_run",
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
    source: Source, stop: asyncio.Event | None = None, *, backoff: Backoff | None = None
) -> None:
    """Poll as the source's schedule says until ``stop`` is set (or cancelled). Failures
    are the source's to record (its health); they are retried with backoff, never raised."""
    stop = stop or asyncio.Event()
    backoff = backoff or Backoff()
    schedule = source.schedule
    while not stop.is_set():
        started = time.time()
        try:
            if schedule.kind == "idle":
                delay = await source.session(stop)
            else:
                await source.poll_once()
                delay = _until_next_poll(schedule, started)
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = backoff.delay(source.health.consecutive_failures)
            if schedule.kind == "every":
                delay = min(delay, schedule.interval.total_seconds())
            elif schedule.kind == "daily":
                delay = min(delay, DAILY_RETRY_CAP)
        if (delay or schedule.kind != "idle") and await sleep_unless_stopped(stop, delay):
            return


def _until_next_poll(schedule: Every | Daily, started: float) -> float:
    if schedule.kind == "every":
        return max(0.0, started + schedule.interval.total_seconds() - time.time())
    now = dt.datetime.now(dt.UTC)
    return (next_daily_run(now, schedule) - now).total_seconds()


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
