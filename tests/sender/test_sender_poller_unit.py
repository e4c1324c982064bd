"""The poller's rules without a server: a scripted mailbox, the schedule, backoff, and
what happens when the state DB fails after the flow finished."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from flowrt.adapters.mail.model import PollDaily, PollEvery
from flowrt.adapters.mail.sender.mailbox import Candidate, message_id_of, plan_batches
from flowrt.adapters.mail.sender.poller import MailPoller
from flowrt.errors import MailConnectException, TenantError
from flowrt.runtime.schedule import Backoff, next_daily_run, run_on_schedule
from flowrt.runtime.state import StateDB
from tests.sender.conftest import Recorder, endpoint_for, make_mail, make_sender
from tests.servers import MailboxUser


class ScriptedMailbox:
    """An in-memory mailbox: ``mails`` by ref; ``finished`` collects post-processed refs."""

    supports_idle = False
    complete_listing = False
    scope = "imap:u@h/INBOX"
    generation = "1"

    def __init__(self, mails: dict[int, bytes]) -> None:
        self.mails = mails
        self.finished: list[int] = []
        self.closed = False

    async def candidates(self) -> list[Candidate]:
        return [Candidate(ref, f"uid:1:{ref}", len(raw)) for ref, raw in self.mails.items()]

    async def batches(
        self, todo: Sequence[Candidate]
    ) -> AsyncGenerator[list[tuple[Candidate, bytes]], None]:
        for batch in plan_batches(todo, max_mails=2):
            yield [(c, self.mails[c.ref]) for c in batch]

    def properties(self, candidate: Candidate) -> dict[str, Any]:
        return {"mail.uid": candidate.ref}

    async def finish(self, done: Sequence[Candidate]) -> None:
        self.finished.extend(c.ref for c in done)

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def clear_new_mail(self) -> None:
        pass

    def new_mail_pending(self) -> bool:
        return False

    async def wait_for_mail(self, wait: float, interrupt: asyncio.Event | None) -> bool:
        return False


def scripted_poller(
    state: StateDB, mailbox: ScriptedMailbox, handle: Any, **kwargs: Any
) -> MailPoller:
    sender = make_sender(**kwargs)

    async def opener() -> ScriptedMailbox:
        return mailbox

    return MailPoller(
        sender,
        endpoint_for(sender, MailboxUser("u", "p")),
        handle,
        state,
        opener=opener,  # type: ignore[arg-type]
    )


async def test_a_state_db_failure_after_the_flow_finished_still_post_processes(
    state: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = ScriptedMailbox({1: make_mail("a"), 2: make_mail("b")})
    p = scripted_poller(state, mailbox, Recorder())

    def broken(*args: Any, **kwargs: Any) -> None:
        raise TenantError("runtime state database: disk I/O error")

    monkeypatch.setattr(state, "record_done", broken)
    with pytest.raises(TenantError):
        await p.poll_once()
    # not marking them would hand them over again on the next poll: marked anyway
    assert mailbox.finished == [1, 2]
    assert p.health.consecutive_failures == 1


async def test_batches_and_max_messages(state: StateDB) -> None:
    mailbox = ScriptedMailbox({i: make_mail(f"m{i}") for i in range(1, 6)})
    handle = Recorder()
    p = scripted_poller(state, mailbox, handle, max_messages=4)
    result = await p.poll_once()
    assert (result.handled, result.more) == (4, True)
    assert mailbox.finished == [1, 2, 3, 4] and mailbox.closed


async def test_run_every_polls_on_schedule_and_stops(state: StateDB) -> None:
    mailbox = ScriptedMailbox({})
    p = scripted_poller(state, mailbox, Recorder(), poll=PollEvery(dt.timedelta(seconds=0.05)))
    polls = 0
    original = p.poll_once

    async def counting() -> Any:
        nonlocal polls
        polls += 1
        return await original()

    p.poll_once = counting  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        run_on_schedule(p, stop, backoff=Backoff(initial=0.01, maximum=0.05))
    )
    await asyncio.sleep(0.32)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert 4 <= polls <= 8


async def test_run_backs_off_after_failures_and_recovers(state: StateDB) -> None:
    attempts = 0
    mailbox = ScriptedMailbox({1: make_mail("late")})
    sender = make_sender(poll=PollEvery(dt.timedelta(seconds=10)))

    async def flaky() -> ScriptedMailbox:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise MailConnectException("Could not connect to IMAP host: h, port: 143")
        return mailbox

    handle = Recorder()
    p = MailPoller(
        sender,
        endpoint_for(sender, MailboxUser("u", "p")),
        handle,
        state,
        opener=flaky,  # type: ignore[arg-type]
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        run_on_schedule(p, stop, backoff=Backoff(initial=0.01, maximum=0.05))
    )
    await asyncio.wait_for(handle.event.wait(), 2)  # after three failures, well before 10 s
    stop.set()
    await asyncio.wait_for(task, 1)
    assert attempts == 4
    assert p.health.consecutive_failures == 0
    assert p.health.last_error.startswith("MailConnectException: Could not connect")


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(initial=1, maximum=10, factor=2, jitter=0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 8, 10, 10]


def test_next_daily_run_in_a_time_zone() -> None:
    poll = PollDaily(dt.time(6, 30), "Europe/Berlin")
    before = dt.datetime(2026, 3, 28, 4, 0, tzinfo=dt.UTC)  # 05:00 in Berlin (CET)
    assert next_daily_run(before, poll) == dt.datetime(2026, 3, 28, 5, 30, tzinfo=dt.UTC)
    after = dt.datetime(2026, 3, 28, 6, 0, tzinfo=dt.UTC)  # passed: tomorrow, now CEST
    assert next_daily_run(after, poll) == dt.datetime(2026, 3, 29, 4, 30, tzinfo=dt.UTC)
    utc = PollDaily(dt.time(0, 0))
    assert next_daily_run(after, utc) == dt.datetime(2026, 3, 29, 0, 0, tzinfo=dt.UTC)


def test_message_id_of_reads_only_the_header_block() -> None:
    assert message_id_of(b"Subject: x\r\nMessage-ID:\r\n <a@b>\r\n\r\nbody") == "a@b"
    assert message_id_of(b"Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n") == ""
    assert message_id_of(b"message-id: <c@d>\n\nx") == "c@d"


def test_plan_batches_bounds_count_and_size() -> None:
    todo = [Candidate(i, str(i), size) for i, size in enumerate([5, 5, 20, 1, 1, 1])]
    batches = plan_batches(todo, max_bytes=10, max_mails=2)
    assert [[c.ref for c in b] for b in batches] == [[0, 1], [2], [3, 4], [5]]


async def test_health_survives_a_restart(state: StateDB) -> None:
    mailbox = ScriptedMailbox({})
    first = scripted_poller(state, mailbox, Recorder())
    first._failed(MailConnectException("Could not connect to IMAP host: h, port: 143"))
    first._failed(MailConnectException("Could not connect to IMAP host: h, port: 143"))
    again = scripted_poller(state, mailbox, Recorder())  # same name, new process
    assert again.health.consecutive_failures == 2
    await again.poll_once()
    assert again.health.consecutive_failures == 0
    assert state.health(again.name)[0].last_success is not None


async def test_old_records_are_purged_once_a_day(state: StateDB) -> None:
    mailbox = ScriptedMailbox({})
    state.record_done(mailbox.scope, "uid:1:9", action="mark-read")
    state.mark_post_processed(mailbox.scope, ["uid:1:9"])
    state.record_done(mailbox.scope, "uid:1:10", action="keep")
    state.mark_post_processed(mailbox.scope, ["uid:1:10"])
    conn = sqlite3.connect(state.path)
    conn.execute("UPDATE mail_records SET updated = updated - 40 * 86400")
    conn.commit()
    conn.close()
    await scripted_poller(state, mailbox, Recorder()).poll_once()
    assert state.keys(mailbox.scope) == ["uid:1:10"]  # the kept mail's record stays


async def test_a_failed_mail_is_never_marked_even_when_the_state_db_fails(
    state: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = ScriptedMailbox({1: make_mail("bad"), 2: make_mail("good")})
    p = scripted_poller(state, mailbox, Recorder(lambda e: e.headers.get("Subject") == "good"))

    def broken(*args: Any, **kwargs: Any) -> int:
        raise TenantError("runtime state database: disk I/O error")

    monkeypatch.setattr(state, "record_failure", broken)
    with pytest.raises(TenantError):
        await p.poll_once()
    assert mailbox.finished == []


async def test_health_is_saved_when_it_changes_and_poll_times_when_the_poller_closes(
    state: StateDB,
) -> None:
    mailbox = ScriptedMailbox({})
    p = scripted_poller(state, mailbox, Recorder())
    await p.poll_once()  # the first poll: saved (there was none)
    [first] = state.health(p.name)
    assert first.last_success is not None

    await p.poll_once()  # nothing but the poll times moved: kept in memory only
    assert state.health(p.name)[0].last_poll == first.last_poll
    assert p.health.last_poll is not None and p.health.last_poll >= first.last_poll

    # a failure is saved at once (what `poller-failing` reads), and so is the recovery
    p._failed(MailConnectException("Could not connect to IMAP host: h, port: 143"))
    [failing] = state.health(p.name)
    assert failing.consecutive_failures == 1 and failing.last_error.startswith("MailConnect")
    assert failing.last_success == p.health.last_success
    await p.poll_once()
    assert state.health(p.name)[0].consecutive_failures == 0

    await p.poll_once()
    await p.aclose()  # stop: the poll times not saved yet are (for `run --once --due`)
    assert state.health(p.name)[0].last_poll == p.health.last_poll


async def test_poll_times_alone_are_saved_every_few_minutes(
    state: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowrt.adapters.mail.sender import poller as module

    p = scripted_poller(state, ScriptedMailbox({}), Recorder())
    await p.poll_once()
    saved = state.health(p.name)[0].last_poll
    assert saved is not None
    monkeypatch.setattr(module, "HEALTH_SAVE_GAP", 0.0)
    await p.poll_once()
    assert state.health(p.name)[0].last_poll == p.health.last_poll


async def test_a_failure_and_a_recovery_are_told_at_once_poll_times_are_not(
    state: StateDB,
) -> None:
    p = scripted_poller(state, ScriptedMailbox({}), Recorder())
    told: list[int] = []
    p.on_health = lambda: told.append(p.health.consecutive_failures)
    await p.poll_once()  # the first poll: a success where there was none
    await p.poll_once()  # only the poll times moved
    assert told == [0]
    p._failed(MailConnectException("Could not connect to IMAP host: h, port: 143"))
    await p.poll_once()
    assert told == [0, 1, 0]
