"""When polls are due: cron next runs (time zones, DST), ``is_due`` for ``run --once --due``,
and ``poll every`` flows spread over their interval instead of polling in step."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from flowrt.adapters.mail.model import Poll, PollCron, PollDaily, PollEvery, PollIdle
from flowrt.runtime import schedule
from flowrt.runtime.schedule import is_due, next_run, run_on_schedule

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_cron_next_run_on_weekdays_in_a_time_zone() -> None:
    poll = PollCron("0 7-18 * * 1-5", "Europe/Berlin")
    # Friday 2026-03-27 18:30 Berlin (CET): next is Monday 07:00, by then CEST
    assert next_run(poll, at(2026, 3, 27, 17, 30)) == at(2026, 3, 30, 5, 0)
    # Monday 06:59:59 Berlin (CEST) -> 07:00 the same day
    assert next_run(poll, at(2026, 3, 30, 4, 59, 59)) == at(2026, 3, 30, 5, 0)
    # on the hour exactly: the next hour, not the same instant again
    assert next_run(poll, at(2026, 3, 30, 5, 0)) == at(2026, 3, 30, 6, 0)


def test_cron_without_tz_is_utc() -> None:
    assert next_run(PollCron("*/15 * * * *"), at(2026, 1, 1, 10, 7)) == at(2026, 1, 1, 10, 15)


@pytest.mark.parametrize(
    ("poll", "last", "now", "due"),
    [
        (PollEvery(dt.timedelta(minutes=5)), at(2026, 1, 1, 10, 0), at(2026, 1, 1, 10, 4), False),
        (PollEvery(dt.timedelta(minutes=5)), at(2026, 1, 1, 10, 0), at(2026, 1, 1, 10, 5), True),
        (PollDaily(dt.time(6, 0)), at(2026, 1, 1, 6, 1), at(2026, 1, 1, 23, 0), False),
        (PollDaily(dt.time(6, 0)), at(2026, 1, 1, 6, 1), at(2026, 1, 2, 6, 0), True),
        (PollCron("0 7 * * 1-5"), at(2026, 1, 2, 7, 0), at(2026, 1, 4, 12, 0), False),  # weekend
        (PollCron("0 7 * * 1-5"), at(2026, 1, 2, 7, 0), at(2026, 1, 5, 7, 1), True),  # Monday
        (PollIdle(), at(2026, 1, 1, 10, 0), at(2026, 1, 1, 10, 0), True),
    ],
)
def test_is_due_since_the_last_poll(
    poll: Poll, last: dt.datetime, now: dt.datetime, due: bool
) -> None:
    assert is_due(poll, last.timestamp(), 0, now) is due


def test_never_polled_or_failed_last_time_is_due() -> None:
    daily = PollDaily(dt.time(6, 0))
    now = at(2026, 1, 1, 12, 0)
    assert is_due(daily, None, 0, now)
    assert is_due(daily, at(2026, 1, 1, 11, 0).timestamp(), 1, now)


@dataclasses.dataclass
class _Health:
    consecutive_failures: int = 0
    last_poll: float | None = None
    last_success: float | None = None
    last_error: str | None = None


@dataclasses.dataclass
class _Source:
    schedule: Poll
    health: _Health = dataclasses.field(default_factory=_Health)
    polls: int = 0

    async def poll_once(self) -> None:
        self.polls += 1

    async def session(self, stop: asyncio.Event) -> float:
        raise AssertionError("not idle")


async def test_every_flows_poll_at_start_then_spread_over_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def first_wait_then_stop(stop: asyncio.Event, delay: float) -> bool:
        waits.append(delay)
        return True

    monkeypatch.setattr(schedule, "sleep_unless_stopped", first_wait_then_stop)
    sources = [_Source(PollEvery(dt.timedelta(minutes=1))) for _ in range(200)]
    await asyncio.gather(*(run_on_schedule(s) for s in sources))
    assert all(s.polls == 1 for s in sources)  # each polled at once
    # and none waits longer than its interval for the second poll, but not all the same
    assert all(0 <= w <= 60 for w in waits)
    assert max(waits) - min(waits) > 30
    assert len({round(w) for w in waits}) > 20


async def test_a_staggered_start_waits_and_a_stop_during_the_wait_polls_nothing() -> None:
    waiting = _Source(PollEvery(dt.timedelta(minutes=1)))
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_on_schedule(waiting, stop, start_after=30))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert waiting.polls == 0

    prompt = _Source(PollEvery(dt.timedelta(minutes=1)))
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_on_schedule(prompt, stop, start_after=0.01))
    for _ in range(200):  # bounded: at most 2 s
        if prompt.polls:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert prompt.polls == 1


@dataclasses.dataclass
class _Outcome:
    more: bool
    busy: str = ""


async def test_a_poll_that_stopped_at_max_messages_is_followed_by_the_next_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def record_the_wait(stop: asyncio.Event, delay: float) -> bool:
        waits.append(delay)
        return len(waits) == 3

    class _Backlog(_Source):
        async def poll_once(self) -> _Outcome:  # type: ignore[override]
            self.polls += 1
            return _Outcome(more=self.polls < 3)  # two full polls, then the backlog is done

    monkeypatch.setattr(schedule, "sleep_unless_stopped", record_the_wait)
    source = _Backlog(PollEvery(dt.timedelta(minutes=5)))
    await run_on_schedule(source)
    assert source.polls == 3
    assert waits[:2] == [0.0, 0.0]  # not five minutes for each max-messages mails
    assert 0 < waits[2] <= 300
