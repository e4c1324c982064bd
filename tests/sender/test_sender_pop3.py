"""POP3: against the real Dovecot (protections, auth, delete/keep, dot-stuffing, failures)
and against small scripted servers for what Dovecot does not do (APOP, no UIDL, IN-USE,
a server that stops answering)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from flowrt.adapters.mail.model import PostProcess
from flowrt.adapters.mail.pop3.session import open_pop3
from flowrt.errors import (
    AuthenticationFailedException,
    MessagingException,
    StoreClosedException,
    find_hint,
    render_chain,
)
from flowrt.runtime.state import StateDB
from tests.sender.conftest import (
    Recorder,
    endpoint_for,
    fill,
    make_mail,
    make_sender,
    poller,
    protection_cases,
)
from tests.servers import DovecotServer, MailboxUser


@pytest.mark.parametrize(("protection", "port", "auth", "tls"), protection_cases("pop3"))
async def test_pop3_poll_with_each_protection_and_auth(
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    client_tls: ssl.SSLContext,
    state: StateDB,
    protection: str,
    port: str,
    auth: str,
    tls: bool,
) -> None:
    sender = make_sender("pop3", port=dovecot.ports()[port], protection=protection, auth=auth)
    endpoint = endpoint_for(sender, mailbox_user, tls=client_tls)
    client = await open_pop3(endpoint)
    assert client.tls_active is tls
    await client.quit()
    fill(dovecot, mailbox_user, [make_mail("one"), make_mail("two")])
    handle = Recorder()
    result = await poller(sender, endpoint, handle, state).poll_once()
    assert result.handled == 2 and handle.subjects == ["one", "two"]
    assert dovecot.messages(mailbox_user.address) == []  # default post-process: delete
    props = handle.seen[0].properties
    assert props["mail.protocol"] == "pop3" and props["mail.number"] == 1 and props["mail.uidl"]


async def test_pop3_keep_hands_over_once_and_forgets_gone_mails(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail("a"), make_mail("b")])
    sender = make_sender("pop3", port=dovecot.pop3_port, post_process=PostProcess("keep"))
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state)
    await p.poll_once()
    second = await p.poll_once()
    assert (second.handled, second.skipped) == (0, 2)
    assert handle.subjects == ["a", "b"] and len(dovecot.messages(mailbox_user.address)) == 2
    scope = f"pop3:{mailbox_user.address}@127.0.0.1"
    assert len(state.keys(scope)) == 2
    with dovecot.imap(mailbox_user.address) as c:  # another client deletes one
        c.select("INBOX")
        c.store("1", "+FLAGS", "\\Deleted")
        c.expunge()
    await p.poll_once()
    assert len(state.keys(scope)) == 1


async def test_pop3_failed_mail_is_not_deleted(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail("ok"), make_mail("bad")])
    sender = make_sender("pop3", port=dovecot.pop3_port)
    handle = Recorder(lambda e: e.headers.get("Subject") == "ok")
    result = await poller(sender, endpoint_for(sender, mailbox_user), handle, state).poll_once()
    assert (result.handled, result.failed) == (1, 1)
    (left,) = dovecot.messages(mailbox_user.address)
    assert b"Subject: bad" in left[2]


async def test_pop3_dot_stuffed_lines_come_back_unchanged(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    body = ".\r\n..two dots\r\n.leading dot\r\nnormal\r\n."
    raw = make_mail("dots", body=body)
    fill(dovecot, mailbox_user, [raw])
    sender = make_sender("pop3", port=dovecot.pop3_port, keep_original=True)
    handle = Recorder()
    await poller(sender, endpoint_for(sender, mailbox_user), handle, state).poll_once()
    (exchange,) = handle.seen
    assert exchange.properties["mail.original"] == raw
    assert exchange.text == body + "\r\n"


async def test_pop3_wrong_password(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext
) -> None:
    sender = make_sender("pop3", port=dovecot.pop3s_port, protection="pop3s")
    with pytest.raises(AuthenticationFailedException) as info:
        await open_pop3(endpoint_for(sender, mailbox_user, tls=client_tls, password="nope"))
    assert render_chain(info.value).startswith("AuthenticationFailedException: [AUTH]")
    assert "credential 'mailbox'" in (find_hint(info.value) or "")
    assert "nope" not in render_chain(info.value)


async def test_pop3_stls_mandatory_fails_when_not_offered(
    dovecot_no_tls: DovecotServer, client_tls: ssl.SSLContext
) -> None:
    user = dovecot_no_tls.new_user()
    sender = make_sender("pop3", port=dovecot_no_tls.pop3_port, protection="starttls-mandatory")
    with pytest.raises(MessagingException, match=r"does not offer STARTTLS \(STLS\)"):
        await open_pop3(endpoint_for(sender, user, tls=client_tls))


async def test_pop3_plain_over_clear_text_is_refused(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    sender = make_sender("pop3", port=dovecot.pop3_port, allow_plaintext_auth=False)
    with pytest.raises(MessagingException, match="refusing to send the password"):
        await open_pop3(endpoint_for(sender, mailbox_user))


# ----------------------------------------------------------------------------- scripted

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


async def line(reader: asyncio.StreamReader) -> str:
    return (await reader.readline()).decode().strip()


MAIL = b"From: a@example.com\r\nSubject: scripted\r\nMessage-ID: <s@x>\r\n\r\nhi\r\n"


def apop_server(deleted: list[int]) -> Script:
    stamp = "<1896.697170952@dbc.mtview.ca.us>"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"+OK POP3 server ready {stamp}\r\n".encode())
        while command := await line(reader):
            verb = command.split()[0].upper()
            if verb == "CAPA":
                writer.write(b"-ERR no CAPA here\r\n")  # an old server
            elif verb == "APOP":
                digest = hashlib.md5(f"{stamp}tanstaaf".encode()).hexdigest()
                ok = command.split()[1:] == ["mrose", digest]
                writer.write(b"+OK maildrop locked\r\n" if ok else b"-ERR [AUTH] bad\r\n")
            elif verb == "LIST":
                writer.write(f"+OK\r\n1 {len(MAIL)}\r\n.\r\n".encode())
            elif verb == "UIDL":
                writer.write(b"-ERR unsupported\r\n")
            elif verb == "RETR":
                writer.write(b"+OK\r\n" + MAIL + b".\r\n")
            elif verb == "DELE":
                deleted.append(int(command.split()[1]))
                writer.write(b"+OK\r\n")
            elif verb == "QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                writer.close()
                return
            await writer.drain()

    return serve


async def test_apop_and_a_server_without_uidl(
    scripted: Callable[[Script], Awaitable[int]], state: StateDB
) -> None:
    deleted: list[int] = []
    port = await scripted(apop_server(deleted))
    sender = make_sender("pop3", port=port, auth="encrypted", allow_plaintext_auth=False)
    user = MailboxUser("mrose", "tanstaaf")
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, user), handle, state)
    result = await p.poll_once()
    assert result.handled == 1 and deleted == [1]
    # without UIDL the mail is known by its Message-ID: not handed over a second time
    second = await p.poll_once()
    assert (second.handled, second.skipped) == (0, 1)
    assert state.keys("pop3:mrose@127.0.0.1") == ["message-id:s@x"]


async def test_mailbox_in_use(scripted: Callable[[Script], Awaitable[int]]) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK ready\r\n")
        while command := await line(reader):
            if command.startswith("CAPA"):
                writer.write(b"+OK\r\nUSER\r\n.\r\n")
            elif command.startswith("USER"):
                writer.write(b"+OK\r\n")
            elif command.startswith("PASS"):
                writer.write(b"-ERR [IN-USE] Mailbox is locked by another session\r\n")
            await writer.drain()

    port = await scripted(serve)
    sender = make_sender("pop3", port=port)
    with pytest.raises(MessagingException, match="in use by another session") as info:
        await open_pop3(endpoint_for(sender, MailboxUser("u", "p")))
    assert info.value.retryable


async def test_a_server_that_stops_answering_times_out(
    scripted: Callable[[Script], Awaitable[int]], state: StateDB
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK ready\r\n")
        await reader.read()  # then silence: a half-open connection, as the client sees it

    port = await scripted(serve)
    sender = make_sender("pop3", port=port, timeout=0.3)
    p = poller(sender, endpoint_for(sender, MailboxUser("u", "p")), Recorder(), state)
    with pytest.raises(MessagingException) as info:
        await asyncio.wait_for(p.poll_once(), 5)
    chain = render_chain(info.value)
    assert chain.startswith(
        f"MessagingException: Could not connect to POP3 host: 127.0.0.1, port: {port};"
    )
    assert "SocketTimeoutException: Read timed out after 0.3s" in chain
    assert isinstance(info.value.__cause__, StoreClosedException)
    assert p.health.consecutive_failures == 1
