"""SMTP failures through both paths: a receiver delivering a flow's message (what the MPL
records) and `flowrt test smtp`. Each asserts the chain's levels, the hint's words and the
exit code, and that no library name or Python repr shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import ProcessingError, is_retryable, library_cause, render_chain
from flowrt.security import TenantSecurity
from flowrt.tenant import Tenant
from tests.failures.conftest import (
    Run,
    assert_no_python,
    error_json,
    hint_of,
    json_levels,
    levels_of,
)
from tests.servers import PostfixServer, ScriptedSMTPServer
from tests.smtp.conftest import make_receiver


def deliver(tenant: Path, port: int, **settings: str) -> ProcessingError:
    """What a flow's receiver raises (and the MPL records) for one message."""
    values = {
        "address": f'"127.0.0.1:{port}"',
        "protection": "off",
        "auth": "none",
        "timeout": "1s",
        **settings,
    }
    receiver = SmtpReceiver(make_receiver(**values), TenantSecurity.open(Tenant(tenant)))
    mail = Exchange(body=b"hello\n", headers=Headers([("Subject", "Invoice 17")]))

    async def send() -> None:
        async with receiver as smtp:
            await smtp.deliver(mail)

    # its own loop: `flowrt test` below runs one too, and loops do not nest
    with pytest.raises(ProcessingError) as info:
        asyncio.run(send())
    assert_no_python(render_chain(info.value))
    return info.value


def test_read_timeout(tenant: Path, flowrt: Run, silent_port: int) -> None:
    expected = [
        (
            "MailConnectException",
            f"Couldn't connect to host, port: 127.0.0.1, {silent_port}; timeout 1000",
        ),
        ("SocketTimeoutException", "Read timed out after 1s (server greeting)"),
    ]
    flow = deliver(tenant, silent_port)
    assert levels_of(flow) == expected
    assert "sent no SMTP greeting within 1s" in hint_of(flow)
    assert is_retryable(flow)
    # the library's exception stays attached for the JSON log, not as a level
    assert (library_cause(flow) or "").startswith("SMTPConnectTimeoutError(")

    result = flowrt(
        "test", "smtp", f"127.0.0.1:{silent_port}", "--protection", "off", "--timeout", "1s",
        "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 1
    error = error_json(result)
    assert json_levels(error) == expected
    assert error["hint"] == hint_of(flow)
    assert_no_python(result.output)


@pytest.mark.parametrize("protection", ["off", "starttls-mandatory"])
def test_plain_client_on_the_smtps_port(
    tenant: Path, flowrt: Run, postfix: PostfixServer, protection: str
) -> None:
    port = postfix.smtps_port
    flow = deliver(tenant, port, protection=protection)
    levels = levels_of(flow)
    assert levels[0] == (
        "MailConnectException",
        f"Couldn't connect to host, port: 127.0.0.1, {port}; timeout 1000",
    )
    assert levels[1][0] == "SocketTimeoutException"
    hint = hint_of(flow)
    assert f"127.0.0.1:{port} speaks TLS at once" in hint
    assert f"use protection smtps for port {port}" in hint
    assert "port 587 with protection starttls-mandatory" in hint
    assert not is_retryable(flow)  # the setting is wrong; the next try fails the same way

    result = flowrt(
        "test", "smtp", f"127.0.0.1:{port}", "--protection", protection, "--timeout", "1s",
        "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 1
    error = error_json(result)
    assert json_levels(error) == levels
    assert error["hint"] == hint


def test_server_closes_right_after_its_greeting(
    tenant: Path, flowrt: Run, greet_then_close: int
) -> None:
    port = greet_then_close
    closed = f"Connection to SMTP host: 127.0.0.1, port: {port} closed during EHLO"
    expected = [
        ("MailConnectException", closed),
        ("IOException", "Connection dropped by server?"),
    ]
    flow = deliver(tenant, port)
    assert levels_of(flow) == expected
    assert "greeted (220 mx.test.example ESMTP ready) and then closed" in hint_of(flow)

    result = flowrt("test", "smtp", f"127.0.0.1:{port}", "--protection", "off")
    assert result.exit_code == 1
    assert "greeting      ok     220 mx.test.example ESMTP ready" in result.output
    assert "Could not connect" not in result.output  # a 220 arrived: it was reached
    assert "MailConnectException: Connection to SMTP host: 127.0.0.1" in result.output
    assert f"hint: {hint_of(flow)}" in result.output
    assert_no_python(result.output)


def test_cram_md5_requested_but_not_offered(
    tenant: Path, flowrt: Run, plain_login_only: int
) -> None:
    port = plain_login_only
    message = f"auth encrypted needs AUTH CRAM-MD5, but 127.0.0.1:{port} offers AUTH PLAIN LOGIN"
    flow = deliver(tenant, port, auth='encrypted credential "smtp-out"')
    assert levels_of(flow) == [("MessagingException", message)]
    assert hint_of(flow) == "use auth plain over TLS (protection starttls-mandatory or smtps)"

    result = flowrt(
        "test", "smtp", f"127.0.0.1:{port}", "--protection", "off", "--auth", "encrypted",
        "--credential", "smtp-out", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 1
    error = error_json(result)
    assert json_levels(error) == [("MessagingException", message)]
    assert error["hint"] == hint_of(flow)
    assert "check credential" not in result.output  # the password is fine: not sent at all


def test_recipient_refused_with_550(
    tenant: Path, flowrt: Run, scripted_smtp: type[ScriptedSMTPServer]
) -> None:
    reply = "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    server = scripted_smtp(rcpt_replies={"nobody@example.com": reply})
    flow = deliver(tenant, server.port, to='"nobody@example.com"')
    expected = [("SendFailedException", f"Invalid Addresses: nobody@example.com ({reply})")]
    assert levels_of(flow) == expected
    hint = hint_of(flow)
    assert "accepted none of the recipients (nobody@example.com)" in hint
    assert "check the to/cc/bcc addresses" in hint

    result = flowrt(
        "test", "smtp", f"127.0.0.1:{server.port}", "--protection", "off",
        "--from", "integration@example.com", "--to", "nobody@example.com", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 1
    error = error_json(result)
    assert json_levels(error) == expected
    assert error["hint"] == hint


def test_starttls_mandatory_without_starttls(
    tenant: Path, flowrt: Run, scripted_smtp: type[ScriptedSMTPServer]
) -> None:
    server = scripted_smtp()
    flow = deliver(tenant, server.port, protection="starttls-mandatory")
    levels = levels_of(flow)
    assert levels == [
        (
            "MessagingException",
            f"the SMTP server 127.0.0.1:{server.port} does not offer STARTTLS; protection "
            "starttls-mandatory does not fall back, since falling back would send the mail "
            "(and any password) in clear",
        )
    ]
    # the port to go to with smtps, not only the word: smtps on this port would fail again
    assert 'address "127.0.0.1:465", protection smtps' in hint_of(flow)

    result = flowrt("test", "smtp", f"127.0.0.1:{server.port}", "--format", "json")
    assert result.exit_code == 1
    error = error_json(result)
    assert json_levels(error) == levels
    assert error["hint"] == hint_of(flow)
