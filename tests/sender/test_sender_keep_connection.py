"""A polling flow's IMAP connection kept open between polls, on the real Dovecot: one login
for many polls, a connection the server closed meanwhile replaced without a failure, a real
failure on the new connection still a failure, and closed on stop, a busy lease, POP3."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest

from flowrt.adapters.mail.model import PollEvery, PostProcess
from flowrt.adapters.mail.sender.keeper import KeptConnection
from flowrt.errors import AuthenticationFailedException
from flowrt.runtime.state import StateDB
from flowrt.source_state import SOURCE_RAW
from tests.sender.conftest import Recorder, endpoint_for, fill, make_mail, make_sender, poller
from tests.servers import DovecotServer, MailboxUser


def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def imap_sender(dovecot: DovecotServer, **settings: Any) -> Any:
    return make_sender(port=dovecot.imap_port, **settings)


async def test_polls_reuse_one_login_and_see_new_mail(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state)
    logins = []  # the poller's own, not those of the test's APPENDs
    for subject in ("a", "b", "c"):
        fill(dovecot, mailbox_user, [make_mail(subject)])
        before = dovecot.logins(mailbox_user.address)
        assert (await p.poll_once()).handled == 1
        logins.append(dovecot.logins(mailbox_user.address) - before)
    assert handle.subjects == ["a", "b", "c"]
    assert logins == [1, 0, 0]
    assert dovecot.sessions(mailbox_user.address) == 1
    await p.aclose()
    until(lambda: dovecot.sessions(mailbox_user.address) == 0, "the logout")
    assert "Logged out" in dovecot.log().split(f"imap({mailbox_user.address})")[-1]


async def test_a_connection_the_server_closed_is_replaced_without_a_failure(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state, flow="kicked")
    assert (await p.poll_once()).handled == 0
    dovecot.kick(mailbox_user.address)
    until(lambda: dovecot.sessions(mailbox_user.address) == 0, "the kick")
    fill(dovecot, mailbox_user, [make_mail("after the kick")])
    before = dovecot.logins(mailbox_user.address)
    assert (await p.poll_once()).handled == 1
    assert handle.subjects == ["after the kick"]
    assert p.health.consecutive_failures == 0 and not p.health.last_error
    assert state.poll_failures("kicked") == []
    assert dovecot.logins(mailbox_user.address) == before + 1
    await p.aclose()


async def test_a_failing_new_login_after_the_drop_is_a_poll_failure(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state, flow="gone")
    await p.poll_once()
    # the password changed on the server meanwhile: the new login is refused
    p.endpoint = endpoint_for(sender, mailbox_user, password="changed meanwhile")
    dovecot.kick(mailbox_user.address)
    until(lambda: dovecot.sessions(mailbox_user.address) == 0, "the kick")
    with pytest.raises(AuthenticationFailedException):
        await p.poll_once()
    assert p.health.consecutive_failures == 1
    assert len(state.poll_failures("gone")) == 1


async def test_a_mailbox_busy_elsewhere_closes_the_kept_connection(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state)
    await p.poll_once()
    assert dovecot.sessions(mailbox_user.address) == 1
    state.acquire_lock(p.lock_key, "other-node", 30)
    assert (await p.poll_once()).busy
    until(lambda: dovecot.sessions(mailbox_user.address) == 0, "the logout")


@pytest.mark.parametrize(
    "settings",
    [
        {"keep": None},  # keep-connection off
        {"poll": PollEvery(dt.timedelta(minutes=30))},  # polls further apart than the keep
    ],
    ids=["off", "interval-above-keep"],
)
async def test_not_kept_logs_out_after_each_poll(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB, settings: dict[str, Any]
) -> None:
    sender = imap_sender(dovecot, poll=settings.get("poll"))
    if "keep" in settings:
        sender = dataclasses.replace(sender, keep_connection=settings["keep"])
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state)
    await p.poll_once()
    await p.poll_once()
    assert dovecot.logins(mailbox_user.address) == 2
    until(lambda: dovecot.sessions(mailbox_user.address) == 0, "the logout")


async def test_pop3_logs_out_after_each_poll(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = make_sender(
        "pop3", port=dovecot.pop3_port, post_process=PostProcess("delete"), timeout=5.0
    )
    fill(dovecot, mailbox_user, [make_mail("a")])  # (over IMAP)
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state)
    assert (await p.poll_once()).handled == 1
    assert (await p.poll_once()).handled == 0
    assert dovecot.logins(mailbox_user.address, "pop3") == 2
    until(lambda: dovecot.sessions(mailbox_user.address) == 0, "the QUIT")


async def test_a_kept_connection_is_logged_out_when_its_time_is_over(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state)
    p._kept.keep = 0.2  # (25 minutes by default)
    await p.poll_once()
    assert dovecot.sessions(mailbox_user.address) == 1
    deadline = time.monotonic() + 10
    while dovecot.sessions(mailbox_user.address) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert dovecot.sessions(mailbox_user.address) == 0


class _Mailbox:
    keepable = True

    def __init__(self, gone: bool = False) -> None:
        self.gone = gone
        self.closed = self.aborted = False

    async def resume(self) -> None:
        if self.gone:
            raise ConnectionError("closed by the server")

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def test_keeper_reuses_replaces_and_closes() -> None:
    made: list[_Mailbox] = []

    async def opener() -> Any:
        made.append(_Mailbox())
        return made[-1]

    kept = KeptConnection(opener, keep=60)
    first = await kept.open()
    await kept.give_back(first)
    assert await kept.open() is first and kept.resumed == 1
    first.gone = True
    await kept.give_back(first)
    second = await kept.open()
    assert second is not first and first.aborted and kept.dropped == 1 and kept.opened == 2
    await kept.give_back(second, keep=False)  # e.g. the lease was lost: logged out
    assert second.closed and not kept.holding
    third = await kept.open()
    await kept.give_back(third)
    await kept.aclose()
    assert third.closed and not kept.holding


async def test_small_tls_read_buffers_read_a_large_mail_whole(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: Any, state: StateDB
) -> None:
    import asyncio.sslproto

    from flowrt.net.tls_buffers import TLS_READ_BUFFER, use_small_tls_buffers

    before = asyncio.sslproto.SSLProtocol.max_size
    big = make_mail("big", size=3 * 1024 * 1024)
    fill(dovecot, mailbox_user, [big])
    sender = make_sender(port=dovecot.imaps_port, protection="imaps")
    handle = Recorder()
    try:
        use_small_tls_buffers()
        assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER
        p = poller(sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state)
        assert (await p.poll_once()).handled == 1
        await p.aclose()
    finally:
        asyncio.sslproto.SSLProtocol.max_size = before
    assert handle.seen[0].text.rstrip("\r\n").endswith("x" * 1000)
    assert len(handle.seen[0].body) >= 3 * 1024 * 1024 - 100
    # the spooled literal (imap/client.py) is handed on as the bytes it was read into
    raw = handle.seen[0].properties[SOURCE_RAW]
    assert type(raw) is bytes and raw.replace(b"\r\n", b"\n") == big.replace(b"\r\n", b"\n")


def _count_searches(p: Any) -> list[int]:
    """Counts the UID SEARCHes of the poller's kept IMAP connections."""
    searches: list[int] = []
    opener = p._kept._opener

    async def counting_opener() -> Any:
        mailbox = await opener()
        original = mailbox.client.uid_search

        async def uid_search(*criteria: str) -> list[int]:
            searches.append(1)
            return list(await original(*criteria))

        mailbox.client.uid_search = uid_search
        return mailbox

    p._kept._opener = counting_opener
    return searches


async def test_an_unchanged_folder_is_not_searched_again_and_new_mail_is_seen(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state)
    searches = _count_searches(p)
    assert (await p.poll_once()).handled == 0
    first = len(searches)  # the candidates, and this runtime's claims a crash may have left
    assert first >= 1
    assert (await p.poll_once()).handled == 0  # a NOOP said nothing changed: no search
    assert len(searches) == first
    fill(dovecot, mailbox_user, [make_mail("new")])
    before = dovecot.logins(mailbox_user.address)
    assert (await p.poll_once()).handled == 1
    assert handle.subjects == ["new"] and len(searches) > first
    assert dovecot.logins(mailbox_user.address) == before  # on the kept connection
    await p.aclose()


async def test_a_mail_another_client_marks_unread_again_is_handed_over(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)  # selection: unread
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state)
    [uid] = fill(dovecot, mailbox_user, [make_mail("read by a person")])
    with dovecot.imap(mailbox_user.address) as c:
        c.select("INBOX")
        c.uid("STORE", str(uid), "+FLAGS", r"(\Seen)")
    assert (await p.poll_once()).handled == 0
    with dovecot.imap(mailbox_user.address) as c:
        c.select("INBOX")
        c.uid("STORE", str(uid), "-FLAGS", r"(\Seen)")
    assert (await p.poll_once()).handled == 1
    assert handle.subjects == ["read by a person"]
    await p.aclose()


async def test_the_folder_is_selected_again_after_a_while(
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    state: StateDB,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowrt.adapters.mail.imap import mailbox as module

    sender = imap_sender(dovecot)
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state)
    searches = _count_searches(p)
    await p.poll_once()
    first = len(searches)
    monkeypatch.setattr(module, "RESELECT_AFTER", 0.0)
    await p.poll_once()  # SELECTed again: searched again, whatever a NOOP would say
    assert len(searches) == first + 1
    await p.aclose()


async def test_a_dead_letter_replayed_between_quiet_polls_is_handed_over(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = imap_sender(dovecot)
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state)
    uid = dovecot.append(mailbox_user.address, "INBOX", make_mail("dead"), ["$flowrt-dead"])
    assert (await p.poll_once()).handled == 0
    assert (await p.poll_once()).handled == 0
    kept = p._kept._parked
    assert kept is not None
    # `flowrt deadletter replay`: the keyword comes off by a silent STORE, which the server
    # does not report back; the poll must search anyway
    state.request_replay(kept.scope, f"uid:{kept.uidvalidity}:{uid}")
    assert (await p.poll_once()).handled == 1
    assert handle.subjects == ["dead"]
    await p.aclose()
