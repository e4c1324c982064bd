"""The receiver against real Postfix (STARTTLS on submission, SMTPS, AUTH through Dovecot
SASL) delivering to Dovecot: what arrives is read back over IMAP and checked."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import uuid
from collections.abc import Callable

import pytest

from flowrt.adapters.mail.mime.compose import MailComposer
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Attachment, Exchange, Headers
from flowrt.errors import (
    AuthenticationFailedException,
    MessagingException,
    SendFailedException,
    SSLHandshakeException,
    find_hint,
    is_retryable,
    render_chain,
)
from tests.servers import DovecotServer, MailboxUser, PostfixServer, TestCA
from tests.smtp.conftest import TestTenant, make_receiver

NewUser = Callable[..., MailboxUser]
INTERMEDIATE = "CN=flowrt Test Intermediate CA"

pytestmark = pytest.mark.servers

FIXED_NOW = dt.datetime(2024, 5, 17, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def exchange(subject: str, body: str = "Grüße aus dem Werk\nZeile 2\n", **kw: object) -> Exchange:
    return Exchange(
        body=body.encode("utf-8"),
        headers=Headers([("Subject", subject), ("From", "supplier@example.test")]),
        **kw,  # type: ignore[arg-type]
    )


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


async def test_starttls_plain_auth_delivers_byte_for_byte(
    postfix: PostfixServer, dovecot: DovecotServer, tenant: TestTenant, new_mailbox_user: NewUser
) -> None:
    to, cc = new_mailbox_user("accounting"), new_mailbox_user("archive")
    receiver = make_receiver(
        address=f'"127.0.0.1:{postfix.submission_port}"',
        to=f'"{to}"',
        cc=f'"{cc}"',
        charset="iso-8859-1",
        attachments="from-message",
    )
    composer = MailComposer(
        receiver, clock=lambda: FIXED_NOW, make_message_id=lambda d: f"<fixed.{uuid.uuid4()}@{d}>"
    )
    subject = unique("Rechnung Nr. 4711 für Müller")
    message = exchange(
        subject,
        attachments=[
            Attachment("Übersicht März.pdf", "application/pdf", b"%PDF-1.4\n\x00\xff binary"),
            Attachment("notes.txt", "text/plain", b"plain notes\r\n"),
        ],
    )
    mail = composer.compose(message)
    async with SmtpReceiver(receiver, tenant.security, composer=composer) as smtp:
        report = await smtp.send(mail, message)

    assert report.accepted == (to.address, cc.address)
    # Postfix offers CHUNKING: the message went as one BDAT chunk, whose reply counts it
    assert report.data_reply.startswith(f"250 2.0.0 Ok: {report.size} bytes queued as")
    assert report.replies[to.address].startswith("250 2.1.5")
    assert report.attempts == 1 and not report.reused_connection

    for user in (to, cc):
        ((_, _, raw),) = [dovecot.wait_for_message(user.address)]
        assert len(dovecot.messages(user.address)) == 1
        # Postfix and LMTP only prepend trace headers: the mail itself arrives unchanged.
        assert raw.endswith(mail.data), "the stored mail differs from what was sent"
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Subject"] == f"Invoice {subject}"
        assert b"=?iso-8859-1?" in raw.split(b"\r\n\r\n", 1)[0].lower()
        body, pdf, notes = parsed.iter_parts()
        assert body.get_content_charset() == "iso-8859-1"
        assert body.get_content().replace("\r\n", "\n") == "Grüße aus dem Werk\nZeile 2\n"
        assert pdf.get_filename() == "Übersicht März.pdf"
        assert pdf.get_content() == b"%PDF-1.4\n\x00\xff binary"
        assert notes.get_filename() == "notes.txt"
        assert "Received: from" in parsed.as_string()  # it did go through Postfix


async def test_smtps_with_cram_md5(
    postfix: PostfixServer, dovecot: DovecotServer, tenant: TestTenant, new_mailbox_user: NewUser
) -> None:
    to = new_mailbox_user()
    receiver = make_receiver(
        address=f'"127.0.0.1:{postfix.smtps_port}"',
        protection="smtps",
        auth='encrypted credential "smtp-out"',
        to=f'"{to}"',
    )
    offset = postfix.log_offset()
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        report = await smtp.deliver(exchange(unique("CRAM over SMTPS")))
    assert report.accepted == (to.address,)
    _, _, raw = dovecot.wait_for_message(to.address)
    assert b"(using TLSv1." in raw  # Postfix' Received header notes the TLS session
    assert "sasl_method=CRAM-MD5" in postfix._log_since(offset)


async def test_missing_root_in_keystore_names_the_issuer_then_import_fixes_it(
    postfix: PostfixServer, bare_tenant: TestTenant, test_ca: TestCA
) -> None:
    for protection, port in (
        ("smtps", postfix.smtps_port),
        ("starttls-mandatory", postfix.submission_port),
    ):
        receiver = make_receiver(address=f'"127.0.0.1:{port}"', protection=protection)
        async with SmtpReceiver(receiver, bare_tenant.security) as smtp:
            with pytest.raises(MessagingException) as info:
                await smtp.deliver(exchange(unique("untrusted")))
        chain = render_chain(info.value)
        assert chain.startswith(
            f"MessagingException: Could not connect to SMTP host: 127.0.0.1, port: {port};\n"
            "  nested exception is:\n"
            "\tSSLHandshakeException: PKIX path building failed: unable to find valid "
            f"certification path to requested target (server certificate issued by "
            f"{INTERMEDIATE})"
        ), chain
        assert isinstance(info.value.__cause__, SSLHandshakeException)
        assert find_hint(info.value) == (
            f"the tenant keystore has no certificate for {INTERMEDIATE}; "
            f"run `flowrt test smtp 127.0.0.1:{port} --protection {protection} --import`"
        )
        assert not is_retryable(info.value)

    bare_tenant.trust("smtp-root", test_ca)  # what `flowrt keystore add` does
    receiver = make_receiver(address=f'"127.0.0.1:{postfix.smtps_port}"', protection="smtps")
    async with SmtpReceiver(receiver, bare_tenant.security) as smtp:
        report = await smtp.deliver(exchange(unique("trusted now")))
    assert report.accepted == ("accounting@example.com",)


async def test_wrong_password_is_the_servers_535_with_a_hint(
    postfix: PostfixServer, tenant: TestTenant
) -> None:
    tenant.add_user("smtp-out", "plant@example.com", "not-the-password")
    receiver = make_receiver(address=f'"127.0.0.1:{postfix.submission_port}"')
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(AuthenticationFailedException) as info:
            await smtp.deliver(exchange(unique("wrong password")))
    # One level: the server's reply is the message, as JavaMail shows it.
    assert render_chain(info.value).startswith(
        "AuthenticationFailedException: 535 5.7.8 Error: authentication failed"
    )
    assert "\n" not in render_chain(info.value)
    hint = find_hint(info.value) or ""
    assert "check the user and password in credential smtp-out" in hint
    assert not is_retryable(info.value)


async def test_unknown_recipient_at_postfix_is_a_send_failure(
    postfix: PostfixServer, dovecot: DovecotServer, tenant: TestTenant, new_mailbox_user: NewUser
) -> None:
    to = new_mailbox_user()
    receiver = make_receiver(
        address=f'"127.0.0.1:{postfix.submission_port}"',
        to=f'"{to}, nobody@example.com"',
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(exchange(unique("partly refused")))
    failure = info.value
    assert failure.invalid == ["nobody@example.com"]
    assert failure.valid_sent == [to.address]
    assert failure.replies["nobody@example.com"].startswith("550 5.1.1 <nobody@example.com>")
    assert not failure.retryable
    assert "not retried, since a retry would send it to them again" in failure.message
    dovecot.wait_for_message(to.address)  # the accepted one has it


async def test_a_refused_chunk_leaves_the_connection_in_step_for_the_next_mail(
    postfix: PostfixServer, dovecot: DovecotServer, tenant: TestTenant, new_mailbox_user: NewUser
) -> None:
    # Postfix offers CHUNKING: the message goes in the same write as MAIL and RCPT, as one
    # counted BDAT chunk, before the client knows that no recipient was taken
    to = new_mailbox_user()
    receiver = make_receiver(
        address=f'"127.0.0.1:{postfix.submission_port}"', to='"${property.rcpt}"'
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(
                exchange(unique("nobody"), properties={"rcpt": "nobody@example.com"})
            )
        assert info.value.invalid == ["nobody@example.com"] and not info.value.valid_sent
        subject = unique("next on the same connection")
        report = await smtp.deliver(exchange(subject, properties={"rcpt": to.address}))
    assert report.reused_connection and report.accepted == (to.address,)
    assert report.data_reply.startswith(f"250 2.0.0 Ok: {report.size} bytes queued as")
    _, _, raw = dovecot.wait_for_message(to.address)
    assert email.message_from_bytes(raw)["Subject"] == f"Invoice {subject}"


async def test_plain_port_with_plain_auth_is_refused_before_any_password(
    postfix: PostfixServer, tenant: TestTenant
) -> None:
    receiver = make_receiver(
        address=f'"127.0.0.1:{postfix.smtp_port}"', protection="off", allow_plaintext_auth=""
    )
    # The validator refuses this flow without allow-plaintext-auth; the runtime checks again.
    strict = dataclasses.replace(
        receiver,
        connection=dataclasses.replace(receiver.connection, allow_plaintext_auth=False),
    )
    offset = postfix.log_offset()
    async with SmtpReceiver(strict, tenant.security) as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(exchange(unique("clear")))
    assert info.value.message == (
        "refusing to send the password of credential 'smtp-out' in clear: the connection to "
        f"127.0.0.1:{postfix.smtp_port} is not encrypted (protection off)"
    )
    assert "AUTH" not in postfix._log_since(offset)
