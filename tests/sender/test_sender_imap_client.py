"""The aioimaplib extension without a server: parsing, the non-recursive reader, secrets
that stay out of command objects, dropped connections failing pending commands."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aioimaplib.aioimaplib import Command

from flowrt.adapters.mail.imap.client import ImapClient, ImapProtocol, SaslCommand
from flowrt.adapters.mail.imap.parse import decode_folder, encode_folder, uid_set
from flowrt.adapters.mail.sasl import cram_md5_response
from flowrt.errors import StoreClosedException
from flowrt.security.secret import Secret


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def connected(
    timeout: float = 2.0, state: str = "NONAUTH"
) -> tuple[ImapClient, ImapProtocol, FakeTransport]:
    protocol = ImapProtocol(asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    assert (await protocol.greeting).startswith(b"* OK")
    protocol.state = state
    client = ImapClient(protocol, "fake.example", 143, timeout)
    return client, protocol, transport


async def sent(transport: FakeTransport, count: int = 1) -> None:
    """Wait until ``count`` more lines were written (commands go through a few tasks)."""
    target = len(transport.written) + count
    for _ in range(100):
        if len(transport.written) >= target:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"nothing sent: {transport.written}")


def sent_tag(transport: FakeTransport) -> str:
    return transport.written[-1].split(b" ", 1)[0].decode()


def test_uid_set_compresses_ranges() -> None:
    assert uid_set([5, 1, 2, 3, 9, 10, 12]) == "1:3,5,9:10,12"
    assert uid_set([7]) == "7"
    with pytest.raises(ValueError):
        uid_set([])


def test_modified_utf7_folder_names() -> None:
    # RFC 3501 section 5.1.3 example
    assert encode_folder("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert decode_folder("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert encode_folder("Entwürfe & Co") == "Entw&APw-rfe &- Co"
    assert decode_folder(encode_folder("Entwürfe & Co")) == "Entwürfe & Co"


async def test_thousands_of_untagged_lines_in_one_chunk_do_not_recurse() -> None:
    # the stock parser recursed once per line: this chunk exceeded the recursion limit
    client, protocol, transport = await connected(state="SELECTED")
    client.capabilities = {"UIDPLUS"}
    task = asyncio.ensure_future(client.uid_expunge([1]))
    await sent(transport)
    tag = sent_tag(transport)
    protocol.data_received(
        b"".join(b"* 1 EXPUNGE\r\n" for _ in range(5000)) + f"{tag} OK done\r\n".encode()
    )
    await asyncio.wait_for(task, 2)


async def test_fetch_with_literals_split_across_chunks() -> None:
    client, protocol, transport = await connected(state="SELECTED")
    task = asyncio.ensure_future(client.fetch_mails([1, 2]))
    await sent(transport)
    tag = sent_tag(transport)
    assert b"UID FETCH 1:2 (UID FLAGS BODY.PEEK[])" in transport.written[-1]
    mail1 = b"Subject: one\r\n\r\n(body with a paren\r\n"
    mail2 = b"Subject: two\r\n\r\n) and {5}\r\n"
    wire = (
        b"* 1 FETCH (UID 1 FLAGS () BODY[] {%d}\r\n" % len(mail1)
        + mail1
        + b")\r\n* 2 FETCH (UID 2 BODY[] {%d}\r\n" % len(mail2)
        + mail2
        + b" FLAGS (\\Seen))\r\n"
        + f"{tag} OK Fetch completed\r\n".encode()
    )
    for i in range(0, len(wire), 7):  # seven bytes at a time
        protocol.data_received(wire[i : i + 7])
    mails = await asyncio.wait_for(task, 2)
    assert [(m.uid, m.raw) for m in mails] == [(1, mail1), (2, mail2)]
    assert mails[1].flags == ("\\Seen",)


async def test_login_password_never_in_the_command_object() -> None:
    client, protocol, transport = await connected()
    seen: list[Command] = []
    original = protocol.execute

    async def spy(command: Command, scrub: str | None = None) -> Any:
        seen.append(command)
        return await original(command, scrub)

    protocol.execute = spy  # type: ignore[method-assign]
    task = asyncio.ensure_future(client.login("me@example.com", 'pa"ss'))
    await sent(transport)
    tag = sent_tag(transport)
    assert transport.written[-1] == f'{tag} LOGIN "me@example.com" "pa\\"ss"\r\n'.encode()
    assert 'pa"ss' not in repr(seen[0]) and "pa" not in str(seen[0].args)
    protocol.data_received(f"{tag} OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n".encode())
    response = await asyncio.wait_for(task, 2)
    assert response.result == "OK"
    assert client.has("MOVE") and client.state == "AUTH"


async def test_sasl_challenge_is_answered_by_the_responder() -> None:
    client, protocol, transport = await connected()
    password = Secret("tanstaaftanstaaf")
    task = asyncio.ensure_future(
        client.authenticate("CRAM-MD5", [lambda c: cram_md5_response("tim", password, c)])
    )
    await sent(transport)
    tag = sent_tag(transport)
    assert transport.written[-1] == f"{tag} AUTHENTICATE CRAM-MD5\r\n".encode()
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    protocol.data_received(b"+ " + base64.b64encode(challenge) + b"\r\n")
    await sent(transport, 0)
    # RFC 2195's example answer
    assert base64.b64decode(transport.written[-1].strip()) == (
        b"tim b913a602c7eda7a495b4e6e7334d3890"
    )
    protocol.data_received(f"{tag} OK done\r\n".encode())
    await sent(transport)
    protocol.data_received(b"* CAPABILITY IMAP4rev1\r\n")
    protocol.data_received(f"{sent_tag(transport)} OK caps\r\n".encode())
    assert (await asyncio.wait_for(task, 2)).result == "OK"


def test_sasl_command_answers_empty_after_its_steps() -> None:
    command = SaslCommand("A1", "XOAUTH2", [], loop=asyncio.new_event_loop())
    assert command.answer(b"+ eyJzdGF0dXMiOiI0MDEifQ==") == b""


async def test_dropped_connection_fails_pending_commands_at_once() -> None:
    client, protocol, transport = await connected(timeout=30)
    task = asyncio.ensure_future(client.noop())
    await sent(transport)
    protocol.data_received(b"* BYE Server shutting down.\r\n")
    protocol.connection_lost(None)
    with pytest.raises(StoreClosedException, match="Server shutting down"):
        await asyncio.wait_for(task, 1)
    with pytest.raises(StoreClosedException):
        await client.noop()


async def test_silent_server_times_out_and_aborts() -> None:
    client, _protocol, transport = await connected(timeout=0.2)
    with pytest.raises(StoreClosedException, match="no answer") as info:
        await asyncio.wait_for(client.noop(), 2)
    assert "SocketTimeoutException" in repr(info.value.__cause__.__class__)
    assert transport.closing


async def test_exists_during_a_command_sets_new_mail() -> None:
    client, protocol, transport = await connected()
    task = asyncio.ensure_future(client.noop())
    await sent(transport)
    protocol.data_received(b"* 4 EXISTS\r\n" + f"{sent_tag(transport)} OK\r\n".encode())
    await asyncio.wait_for(task, 1)
    assert protocol.new_mail.is_set()
