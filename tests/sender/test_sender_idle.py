"""poll idle: push delivery, IDLE refresh, reconnects after a restart and a half-open
connection, stopping."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

from flowrt.adapters.mail.imap.mailbox import ImapMailbox
from flowrt.adapters.mail.model import PollIdle
from flowrt.adapters.mail.sender.mailbox import Mailbox
from flowrt.adapters.mail.sender.poller import MailPoller
from flowrt.runtime.state import StateDB
from tests.sender.conftest import (
    Recorder,
    endpoint_for,
    fill,
    flags_by_subject,
    make_mail,
    make_sender,
    poller,
    run,
)
from tests.servers import DovecotServer, MailboxUser


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class CountingOpener:
    """Opens the real mailbox and counts connections and IDLE waits."""

    def __init__(self, poller_of: Callable[[], MailPoller]) -> None:
        self.poller_of = poller_of
        self.opened = 0
        self.idles = 0

    async def __call__(self) -> Mailbox:
        p = self.poller_of()
        mailbox = await ImapMailbox.open(
            p.endpoint,
            folder=p.sender.folder,
            selection=p.sender.selection,
            post_process=p.sender.post_process,
        )
        self.opened += 1
        original = mailbox.wait_for_mail

        async def counted(wait: float, interrupt: asyncio.Event | None) -> bool:
            self.idles += 1
            return await original(wait, interrupt)

        mailbox.wait_for_mail = counted  # type: ignore[method-assign]
        return mailbox


async def test_idle_delivers_an_appended_mail_by_push(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail("waiting")])
    sender = make_sender(port=dovecot.imaps_port, protection="imaps", poll=PollIdle())
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state)
    opener = CountingOpener(lambda: p)
    p._opener = opener
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(p, stop))
    try:
        await wait_until(lambda: opener.idles >= 1)  # the waiting mail is done, IDLE runs
        assert handle.subjects == ["waiting"]
        handle.event.clear()
        await asyncio.to_thread(dovecot.append, mailbox_user.address, "INBOX", make_mail("pushed"))
        # pushed, not polled: the IDLE refresh is 25 minutes and the session is never reopened
        # (opened == 1 below); how fast is for benchmarks/imap_poll.py, not for a test on a
        # loaded machine
        await asyncio.wait_for(handle.event.wait(), 20.0)
        assert handle.subjects == ["waiting", "pushed"]
        await wait_until(
            lambda: flags_by_subject(dovecot, mailbox_user).get("pushed") == ("\\Seen",)
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert opener.opened == 1
    assert state.locks() == []  # released when the session ended


async def test_idle_is_reissued_and_each_wake_polls(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    sender = make_sender(port=dovecot.imap_port, poll=PollIdle())
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state, idle_refresh=0.1)
    opener = CountingOpener(lambda: p)
    p._opener = opener
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(p, stop))
    try:
        await wait_until(lambda: opener.idles >= 5)
        fill(dovecot, mailbox_user, [make_mail("late")])
        await asyncio.wait_for(handle.event.wait(), 2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert opener.opened == 1 and p.health.consecutive_failures == 0


async def test_idle_reconnects_after_a_server_restart(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    sender = make_sender(port=dovecot.imap_port, poll=PollIdle())
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state)
    opener = CountingOpener(lambda: p)
    p._opener = opener
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(p, stop))
    try:
        await wait_until(lambda: opener.idles >= 1)
        await asyncio.to_thread(dovecot.restart)
        await asyncio.to_thread(fill, dovecot, mailbox_user, [make_mail("after restart")])
        await asyncio.wait_for(handle.event.wait(), 15)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert handle.subjects == ["after restart"]
    assert opener.opened >= 2
    # the drop was reported, and the next successful poll cleared the failure count
    assert p.health.last_error.startswith(
        ("StoreClosedException", "MessagingException: Could not connect")
    )
    assert p.health.consecutive_failures == 0


async def test_half_open_idle_connection_is_detected_and_replaced(state: StateDB) -> None:
    """A server that acknowledges IDLE, then never answers again (a dead peer that the
    kernel does not know about): DONE times out, the poller reconnects."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] fake\r\n")
        while raw := await reader.readline():
            tag, _, rest = raw.decode().strip().partition(" ")
            verb = rest.split(" ")[0].upper()
            if verb == "CAPABILITY":
                writer.write(f"* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK\r\n".encode())
            elif verb in ("LOGIN", "NOOP", "LOGOUT"):
                writer.write(f"{tag} OK done\r\n".encode())
            elif verb == "SELECT":
                writer.write(f"* 0 EXISTS\r\n* OK [UIDVALIDITY 9] x\r\n{tag} OK sel\r\n".encode())
            elif verb == "UID":
                writer.write(f"* SEARCH\r\n{tag} OK\r\n".encode())
            elif verb == "IDLE":
                writer.write(b"+ idling\r\n")
                await writer.drain()
                await reader.read()  # silence from now on
                return
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = make_sender(port=port, poll=PollIdle(), timeout=0.3)
    p = poller(
        sender, endpoint_for(sender, MailboxUser("u@x", "p")), Recorder(), state, idle_refresh=0.1
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(p, stop))
    try:
        await wait_until(lambda: connections >= 2, timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        server.close()
    assert "no answer from IMAP host" in p.health.last_error


async def test_stop_ends_idle_at_once(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = make_sender(port=dovecot.imap_port, poll=PollIdle())
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state)
    opener = CountingOpener(lambda: p)
    p._opener = opener
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(p, stop))
    await wait_until(lambda: opener.idles >= 1)
    stop.set()
    # at once means without waiting for the server or the 25-minute IDLE refresh; the bound
    # is loose so that a loaded machine does not fail it
    await asyncio.wait_for(task, 10)
