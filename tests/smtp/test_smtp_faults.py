"""Misbehaving servers (scripted aiosmtpd): refusals, drops, slow replies, missing STARTTLS."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest

from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import (
    MailConnectException,
    MessagingException,
    SendFailedException,
    SocketTimeoutException,
    find_hint,
    is_retryable,
    render_chain,
)
from tests.servers.ca import ServerCert
from tests.servers.scripted_smtp import ScriptedSMTPServer
from tests.smtp.conftest import TestTenant, drop_once_server, make_receiver

Start = Callable[..., ScriptedSMTPServer]


@pytest.fixture(params=["one-by-one", "pipelining", "chunking"])
def scripted(request: pytest.FixtureRequest, scripted: Start) -> Start:
    """Every scripted server here three times: without PIPELINING (a command, its reply),
    with it (MAIL, RCPT and DATA in one write), and with CHUNKING as well (MAIL, RCPT and
    the message as one BDAT chunk in one write): the same replies kept, the same failures."""

    def start(server: ScriptedSMTPServer | None = None, **fields: Any) -> ScriptedSMTPServer:
        if server is None:
            server = ScriptedSMTPServer(**fields)
        server.script = dataclasses.replace(
            server.script,
            pipelining=request.param != "one-by-one",
            chunking=request.param == "chunking",
        )
        return scripted(server)

    return start


def receiver_for(tenant: TestTenant, port: int, **settings: str) -> SmtpReceiver:
    values = {
        "address": f'"127.0.0.1:{port}"',
        "protection": "off",
        "auth": "none",
        "timeout": "2s",
        **settings,
    }
    return SmtpReceiver(make_receiver(**values), tenant.security)


def mail(subject: str = "Invoice 17") -> Exchange:
    return Exchange(body=b"hello\n", headers=Headers([("Subject", subject)]))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- connecting


async def test_connection_refused_is_a_mail_connect_exception(tenant: TestTenant) -> None:
    port = closed_port()
    async with receiver_for(tenant, port) as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail())
    assert render_chain(info.value).startswith(
        f"MailConnectException: Couldn't connect to host, port: 127.0.0.1, {port}; timeout 2000\n"
        "  nested exception is:\n"
        "\tConnectException: Connection refused"
    )
    assert f"nothing listens on 127.0.0.1:{port}" in (find_hint(info.value) or "")
    assert is_retryable(info.value)


async def test_421_greeting_is_retryable(tenant: TestTenant, scripted: Start) -> None:
    server = scripted(greeting="421 4.3.2 Service not available, try later")
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail())
    assert info.value.message == (
        f"Could not connect to SMTP host: 127.0.0.1, port: {server.port}, "
        "response: 421 4.3.2 Service not available, try later"
    )
    assert is_retryable(info.value)


async def test_554_greeting_is_not_retryable(tenant: TestTenant, scripted: Start) -> None:
    server = scripted(greeting="554 5.7.1 You are not welcome here")
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail())
    assert not is_retryable(info.value)
    assert "refuses SMTP sessions from this machine" in (find_hint(info.value) or "")


async def test_slow_greeting_times_out(tenant: TestTenant, scripted: Start) -> None:
    server = scripted(delays={"greeting": 5})
    async with receiver_for(tenant, server.port, timeout="1s") as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail())
    assert render_chain(info.value) == (
        f"MailConnectException: Couldn't connect to host, port: 127.0.0.1, {server.port}; "
        "timeout 1000\n"
        "  nested exception is:\n"
        "\tSocketTimeoutException: Read timed out after 1s (server greeting)"
    )
    assert is_retryable(info.value)


async def test_slow_reply_to_the_data_times_out(tenant: TestTenant, scripted: Start) -> None:
    server = scripted(delays={"DATA": 5})
    async with receiver_for(tenant, server.port, timeout="1s") as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert render_chain(info.value) == (
        f"MessagingException: Exception reading response from SMTP host: 127.0.0.1, port: "
        f"{server.port}\n"
        "  nested exception is:\n"
        "\tSocketTimeoutException: Read timed out after 1s waiting for the reply to "
        + ("BDAT" if server.script.chunking else "DATA")
    )
    assert isinstance(info.value.__cause__, SocketTimeoutException)
    assert is_retryable(info.value)
    assert smtp.pool.idle_count() == 0  # a session that timed out is never reused


# ----------------------------------------------------------------------------- recipients


async def test_some_recipients_refused_sends_to_the_rest_and_is_not_retried(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(
        rcpt_replies={
            "full@example.com": "452 4.2.2 Mailbox full",
            "nobody@example.com": "550 5.1.1 No such user",
        }
    )
    to = '"full@example.com, accounting@example.com, nobody@example.com, audit@example.com"'
    async with receiver_for(tenant, server.port, to=to) as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(mail())
        assert smtp.pool.idle_count() == 1  # the session is still good
    failure = info.value
    assert failure.invalid == ["full@example.com", "nobody@example.com"]
    assert failure.valid_sent == ["accounting@example.com", "audit@example.com"]
    assert failure.valid_unsent == []
    assert failure.replies == {
        "full@example.com": "452 4.2.2 Mailbox full",
        "nobody@example.com": "550 5.1.1 No such user",
    }
    assert not is_retryable(failure)  # 452 included: a retry would send twice
    assert render_chain(failure) == (
        "SendFailedException: Invalid Addresses: full@example.com (452 4.2.2 Mailbox full); "
        "nobody@example.com (550 5.1.1 No such user); the mail was sent to the other "
        "recipients (accounting@example.com, audit@example.com) and is not retried, since a "
        "retry would send it to them again"
    )
    (received,) = server.wait_for_messages(1)
    assert received.rcpt_tos == ("accounting@example.com", "audit@example.com")


async def test_the_envelope_goes_in_one_write_when_the_server_pipelines(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted()
    to = '"accounting@example.com, audit@example.com"'
    async with receiver_for(tenant, server.port, to=to) as smtp:
        first = await smtp.deliver(mail("first"))
        dots = Exchange(body=b".one dot\n..two dots\n", headers=Headers([("Subject", "dots")]))
        second = await smtp.deliver(dots)
    for report in (first, second):
        assert report.accepted == ("accounting@example.com", "audit@example.com")
        assert set(report.replies.values()) == {"250 2.1.5 OK"}
        assert report.data_reply == "250 2.0.0 OK queued"
    assert second.reused_connection
    rcpts = b"RCPT TO:<accounting@example.com>\r\nRCPT TO:<audit@example.com>\r\n"
    received = server.wait_for_messages(2)
    if server.script.chunking:  # the RCPTs and the message itself were there before MAIL's reply
        assert server.bdat_commands == [f"BDAT {len(m.data)} LAST" for m in received]
        assert server.waiting_at_mail == [
            rcpts + f"BDAT {len(m.data)} LAST\r\n".encode() + m.data for m in received
        ]
    elif server.script.pipelining:  # the RCPTs and DATA were there before MAIL's reply
        assert server.waiting_at_mail == [rcpts + b"DATA\r\n"] * 2
    assert [m.rcpt_tos for m in received] == [("accounting@example.com", "audit@example.com")] * 2
    assert received[1].data.endswith(b"\r\n\r\n.one dot\r\n..two dots\r\n")  # dots kept


@pytest.mark.parametrize(
    ("replies", "retryable"),
    [
        ({"a@example.com": "452 4.2.2 Mailbox full", "b@example.com": "451 4.3.0 Try later"}, True),
        ({"a@example.com": "550 5.1.1 No such user", "b@example.com": "550 5.1.1 No"}, False),
        ({"a@example.com": "452 4.2.2 Mailbox full", "b@example.com": "550 5.1.1 No"}, False),
    ],
)
async def test_all_recipients_refused(
    tenant: TestTenant, scripted: Start, replies: dict[str, str], retryable: bool
) -> None:
    server = scripted(rcpt_replies=replies)
    async with receiver_for(tenant, server.port, to='"a@example.com, b@example.com"') as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(mail())
    assert info.value.invalid == ["a@example.com", "b@example.com"]
    assert info.value.valid_sent == []
    assert info.value.replies == replies
    assert is_retryable(info.value) is retryable
    assert server.received == []


async def test_refused_sender_and_refused_content(tenant: TestTenant, scripted: Start) -> None:
    server = scripted(mail_reply="553 5.7.1 Sender address rejected: not owned by user")
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(mail())
    assert info.value.message.startswith("553 5.7.1 Sender address rejected")
    assert info.value.valid_unsent == ["accounting@example.com"]
    assert not is_retryable(info.value)

    server = scripted(data_reply="451 4.7.1 Greylisted, come back later")
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(mail())
    assert info.value.message.startswith("451 4.7.1 Greylisted")
    assert is_retryable(info.value)


async def test_a_421_reply_to_mail_from_is_a_closed_connection(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(mail_reply="421 4.3.2 Service shutting down")
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail())
        assert smtp.pool.idle_count() == 0
    assert "closed during MAIL FROM (421 4.3.2 Service shutting down)" in render_chain(info.value)
    assert is_retryable(info.value)
    assert server.received == []


# ----------------------------------------------------------------------------- dropped


async def test_drop_during_data_is_retried_once_on_a_fresh_connection(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(drop_once_server())
    async with receiver_for(tenant, server.port) as smtp:
        report = await smtp.deliver(mail("dropped once"))
    assert report.attempts == 2
    assert server.connections == 2
    first, second = server.wait_for_messages(2)
    assert first.dropped and not second.dropped
    assert first.data == second.data  # the same bytes, serialized once


async def test_drop_during_data_twice_is_a_retryable_mail_connect_exception(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(drop_during_data=True)
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail())
    during = "BDAT" if server.script.chunking else "DATA"
    assert render_chain(info.value) == (
        f"MailConnectException: Connection to SMTP host: 127.0.0.1, port: {server.port} closed "
        f"during {during}; the mail was not sent (tried 2 times, the last on a fresh connection)\n"
        "  nested exception is:\n"
        "\tIOException: Connection dropped by server?"
    )
    assert is_retryable(info.value)
    assert server.connections == 2


# ----------------------------------------------------------------------------- STARTTLS


async def test_starttls_mandatory_fails_without_starttls(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted()  # no certificate: no STARTTLS in EHLO
    async with receiver_for(tenant, server.port, protection="starttls-mandatory") as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert info.value.message == (
        f"the SMTP server 127.0.0.1:{server.port} does not offer STARTTLS; protection "
        "starttls-mandatory does not fall back, since falling back would send the mail (and "
        "any password) in clear"
    )
    assert not is_retryable(info.value)
    assert server.received == []


async def test_starttls_optional_without_starttls_refuses_plain_auth(
    tenant: TestTenant, scripted: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mail.log")  # aiosmtpd logs every line it reads
    server = scripted(credentials={"plant@example.com": "plant-secret"}, auth_require_tls=False)
    receiver = receiver_for(
        tenant,
        server.port,
        protection="starttls-optional",
        auth='plain credential "smtp-out"',
    )
    async with receiver as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert info.value.message.startswith("refusing to send the password of credential")
    assert "protection starttls-optional" in info.value.message
    client_lines = [r.getMessage() for r in caplog.records if " >> " in r.getMessage()]
    assert any("EHLO" in line for line in client_lines)
    assert not any("AUTH" in line.upper() for line in client_lines)
    assert server.received == []


async def test_starttls_optional_uses_tls_when_offered(
    tenant: TestTenant, scripted: Start, server_cert: ServerCert
) -> None:
    server = scripted(tls=server_cert)
    async with receiver_for(tenant, server.port, protection="starttls-optional") as smtp:
        await smtp.deliver(mail())
    (received,) = server.wait_for_messages(1)
    assert received.tls


async def test_starttls_optional_sends_in_clear_without_auth(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted()
    async with receiver_for(tenant, server.port, protection="starttls-optional") as smtp:
        await smtp.deliver(mail())
    (received,) = server.wait_for_messages(1)
    assert not received.tls


async def test_plain_auth_over_clear_with_allow_plaintext_auth(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(credentials={"plant@example.com": "plant-secret"}, auth_require_tls=False)
    receiver = receiver_for(
        tenant,
        server.port,
        auth='plain credential "smtp-out"',
        allow_plaintext_auth="",
    )
    async with receiver as smtp:
        await smtp.deliver(mail())
    (received,) = server.wait_for_messages(1)
    assert received.auth_user == "plant@example.com"


async def test_encrypted_auth_needs_cram_md5(tenant: TestTenant, scripted: Start) -> None:
    server = scripted(credentials={"plant@example.com": "plant-secret"}, auth_require_tls=False)
    async with receiver_for(tenant, server.port, auth='encrypted credential "smtp-out"') as smtp:
        await smtp.deliver(mail())  # CRAM-MD5 hashes the password: fine over a clear link
    (received,) = server.wait_for_messages(1)
    assert received.auth_user == "plant@example.com"


# ----------------------------------------------------------------------------- injection


async def test_line_break_in_a_message_value_sends_nothing(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted()
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail("Invoice\r\nBcc: victim@example.org"))
    assert "contains a line break; refusing to write it into the mail headers" in (
        info.value.message
    )
    assert not is_retryable(info.value)
    assert server.connections == 0


@dataclasses.dataclass(frozen=True)
class RawMail:
    sender: str
    recipients: tuple[str, ...]
    data: bytes = b"Subject: raw\r\n\r\nraw\r\n"


async def test_an_address_that_would_break_the_command_line_is_refused(
    tenant: TestTenant, scripted: Start
) -> None:
    """Defence behind the composer: ``send`` takes mails from elsewhere too."""
    server = scripted()
    async with receiver_for(tenant, server.port) as smtp:
        for bad in (
            RawMail("evil@example.com\r\nRSET", ("a@example.com",)),
            RawMail("a@example.com", ("b@example.com", "c@example.com> NOTIFY=NEVER")),
        ):
            with pytest.raises(MessagingException) as info:
                await smtp.send(bad)
            assert "cannot be sent: it has characters that are not allowed" in str(info.value)
            assert not is_retryable(info.value)
        report = await smtp.send(RawMail("a@example.com", ("b@example.com",)))
    assert report.reused_connection  # the session survived (RSET), and nothing else was sent
    (received,) = server.wait_for_messages(1)
    assert received.rcpt_tos == ("b@example.com",)


async def test_a_mail_over_the_servers_size_limit_is_not_sent(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(data_size_limit=200)  # EHLO says SIZE 200
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(Exchange(body=b"x" * 500, headers=Headers([("Subject", "big")])))
    assert "more than" in info.value.message and "(SIZE 200); not sent" in info.value.message
    assert info.value.valid_unsent == ["accounting@example.com"]
    assert not is_retryable(info.value)
    assert server.received == []


async def test_failures_are_logged_with_where_and_whether_retryable(
    tenant: TestTenant,
    scripted: Start,
    flowrt_logs: list[MutableMapping[str, Any]],
) -> None:
    server = scripted(greeting="421 4.3.2 Busy")
    async with receiver_for(tenant, server.port) as smtp:
        with pytest.raises(MailConnectException):
            await smtp.deliver(mail())
    (event,) = [e for e in flowrt_logs if e["event"] == "smtp.delivery_failed"]
    assert event["host"] == "127.0.0.1" and event["port"] == server.port
    assert event["receiver"] == "out" and event["retryable"] is True
    assert event["error"].startswith("MailConnectException: Could not connect to SMTP host")


async def test_chunking_off_sends_data_to_a_server_that_offers_chunking(
    tenant: TestTenant,
) -> None:
    # for a server that offers CHUNKING and mishandles BDAT: the receiver's way out
    with ScriptedSMTPServer(pipelining=True, chunking=True) as server:
        async with receiver_for(tenant, server.port) as smtp:
            await smtp.deliver(mail("chunked"))
        async with receiver_for(tenant, server.port, chunking="off") as smtp:
            report = await smtp.deliver(mail("as data"))
        received = server.wait_for_messages(2)
    assert report.data_reply == "250 2.0.0 OK queued"
    assert server.bdat_commands == [f"BDAT {len(received[0].data)} LAST"]  # the first only
    assert received[1].data.endswith(b"\r\n\r\nhello\r\n")
