"""Alerts through real Postfix (SMTPS and STARTTLS with AUTH through Dovecot) into Dovecot:
what arrives is read back over IMAP. The tests are synchronous (the CLI runs its own event
loop) and run each notifier cycle with ``asyncio.run``."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import Result
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from flowrt.notify.notifier import Notifier
from flowrt.security import TenantSecurity, edit_keystore
from flowrt.security.certificates import self_signed
from flowrt.tenant import Tenant
from tests.notify.conftest import Clock, flowrt, ok, record_failure
from tests.servers import DovecotServer, MailboxUser, PostfixServer, TestCA

pytestmark = pytest.mark.servers

NewUser = Callable[..., MailboxUser]
INTERMEDIATE = "CN=flowrt Test Intermediate CA"


@pytest.fixture
def sender(new_mailbox_user: NewUser) -> MailboxUser:
    """The login alerts are sent with (Postfix asks Dovecot for it)."""
    return new_mailbox_user("flowrt")


def add_login(tenant: Path, user: MailboxUser) -> None:
    ok(
        flowrt(
            tenant,
            "credentials",
            "add",
            "notify-out",
            "--user",
            user.address,
            "--password-stdin",
            input=user.password,
        )
    )


@pytest.fixture
def tenant(bare_tenant: Path, test_ca: TestCA, sender: MailboxUser) -> Path:
    ca = bare_tenant.parent / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    ok(flowrt(bare_tenant, "keystore", "add", "test-root", str(ca)))
    add_login(bare_tenant, sender)
    return bare_tenant


def set_server(tenant: Path, port: int, protection: str, sender: MailboxUser) -> Result:
    return flowrt(
        tenant,
        "notify",
        "server",
        "set",
        f"127.0.0.1:{port}",
        "--protection",
        protection,
        "--credential",
        "notify-out",
        "--from",
        sender.address,
        "--timeout",
        "10s",
    )


def read(raw: bytes) -> EmailMessage:
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    return mail


def body(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


def notifier(tenant: Path, clock: Clock) -> Notifier:
    t = Tenant(tenant)
    return Notifier(t, TenantSecurity.open(t), clock=clock)


def test_set_and_test_over_starttls_show_the_dialogue_and_deliver(
    postfix: PostfixServer,
    dovecot: DovecotServer,
    tenant: Path,
    sender: MailboxUser,
    new_mailbox_user: NewUser,
) -> None:
    saved = ok(set_server(tenant, postfix.submission_port, "starttls-mandatory", sender))
    for stage in ("connect", "greeting", "tls", "certificate", "auth", "mail from"):
        assert f"  {stage} " in saved.output, saved.output
    assert f"saved: alerts go through 127.0.0.1:{postfix.submission_port}" in saved.output
    shown = ok(flowrt(tenant, "notify", "server", "show", "--format", "json")).output
    assert '"protection": "starttls-mandatory"' in shown and '"credential": "notify-out"' in shown

    ops = new_mailbox_user("ops")
    tested = ok(flowrt(tenant, "notify", "server", "test", "--to", ops.address))
    assert f"  rcpt to       ok     {ops.address}: 250 2.1.5 Ok" in tested.output
    # as one BDAT chunk (Postfix offers CHUNKING), whose reply counts the bytes
    assert re.search(
        rf"  send          ok     {re.escape(ops.address)}: 250 2\.0\.0 Ok: \d+ bytes queued as",
        tested.output,
    ), tested.output
    assert "verdict: OK" in tested.output
    _, _, raw = dovecot.wait_for_message(ops.address)
    mail = read(raw)
    assert mail["Subject"] == "[flowrt] test mail from flowrt"
    assert mail["From"] == sender.address
    assert b"(using TLSv1." in raw  # Postfix' Received header: it came over TLS

    ok(flowrt(tenant, "notify", "server", "remove"))
    gone = flowrt(tenant, "notify", "server", "test", "--to", ops.address)
    # not found exits 1 (the README's exit-code rule, issue 20)
    assert gone.exit_code == 1 and "no notification server is set" in gone.output


def test_failures_limit_reset_and_digest_over_smtps_and_no_password_anywhere(
    postfix: PostfixServer,
    dovecot: DovecotServer,
    tenant: Path,
    sender: MailboxUser,
    new_mailbox_user: NewUser,
    clock: Clock,
) -> None:
    outputs = [ok(set_server(tenant, postfix.smtps_port, "smtps", sender)).output]
    ops = new_mailbox_user("ops")
    ok(
        flowrt(
            tenant,
            "notify",
            "rule",
            "add",
            "failures",
            "--on",
            "message-failed",
            "--to",
            ops.address,
        )
    )
    n = notifier(tenant, clock)
    asyncio.run(n.run_once())
    ids = [record_failure(tenant) for _ in range(4)]
    asyncio.run(n.run_once())

    dovecot.wait_for_message(
        ops.address, predicate=lambda _m: len(dovecot.messages(ops.address)) >= 3
    )
    mails = [read(raw) for _, _, raw in dovecot.messages(ops.address)]
    assert len(mails) == 3
    first = next(m for m in mails if ids[0] in body(m))
    assert first["Subject"].startswith(
        "[flowrt] FAILED in flow invoice-forward: MailConnectException: Could not connect to "
    )
    text = body(first)
    assert (
        "What happened: Message " + ids[0] + " of flow invoice-forward (version 1) ended FAILED"
        in text
    )
    assert (
        "Error: MailConnectException: Could not connect to SMTP host: smtp.example.com, port: "
        "465; caused by ConnectException: Connection refused\n"
    ) in text
    assert "Hint: is smtp.example.com:465 reachable from here?" in text
    assert f"MPL ID: {ids[0]}\nDetails: flowrt mpl show {ids[0]}\n" in text
    counters = ok(flowrt(tenant, "notify", "counters")).output
    assert f"{ops.address}  3         3      1" in counters, counters
    outputs.append(counters)

    outputs.append(ok(flowrt(tenant, "notify", "reset", ops.address)).output)
    clock.advance(60)
    fifth = record_failure(tenant)
    asyncio.run(n.run_once())
    n.close()
    dovecot.wait_for_message(ops.address, predicate=lambda m: fifth.encode() in m[2])
    digest = next(read(raw) for _, _, raw in dovecot.messages(ops.address) if fifth.encode() in raw)
    text = body(digest)
    assert "1 more alert(s) since" in text and f"(flowrt mpl show {ids[3]})" in text
    for args in (
        ("log", "--chain"),
        ("log", "--format", "json"),
        ("server", "show"),
        ("counters", "--format", "json"),
        ("rule", "list"),
    ):
        outputs.append(ok(flowrt(tenant, "notify", *args)).output)

    secret = sender.password.encode()
    assert not [o for o in outputs if sender.password in o]
    assert not [raw for _, _, raw in dovecot.messages(ops.address) if secret in raw]
    leaked = [p for p in tenant.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert leaked == []


def test_certificate_expiring_in_10_days_with_a_30_day_rule_alerts_once(
    postfix: PostfixServer,
    dovecot: DovecotServer,
    tenant: Path,
    sender: MailboxUser,
    new_mailbox_user: NewUser,
    clock: Clock,
) -> None:
    ok(set_server(tenant, postfix.smtps_port, "smtps", sender))
    ops = new_mailbox_user("ops")
    ok(
        flowrt(
            tenant,
            "notify",
            "rule",
            "add",
            "certs",
            "--on",
            "keystore-expiry",
            "--within",
            "30d",
            "--to",
            ops.address,
        )
    )
    name = x509.Name.from_rfc4514_string("CN=partner.example")
    cert = self_signed(name, ec.generate_private_key(ec.SECP256R1()), days=10)
    with edit_keystore(Tenant(tenant)) as keystore:
        keystore.add_certificates("partner", [cert])

    n = notifier(tenant, clock)
    asyncio.run(n.run_once())
    asyncio.run(n.run_once())
    clock.advance(86400 + 1)  # the daily check finds the same entry: no second mail
    asyncio.run(n.run_once())
    n.close()
    _, _, raw = dovecot.wait_for_message(ops.address)
    assert len(dovecot.messages(ops.address)) == 1
    mail = read(raw)
    assert mail["Subject"].startswith("[flowrt] keystore entry partner expires in ")
    assert "Keystore entry partner (CN=partner.example) is valid until" in body(mail)
    assert "test-root" not in body(mail)  # the CA is valid for years


def test_untrusted_server_is_refused_with_the_pkix_chain_and_the_import_hint(
    postfix: PostfixServer, tenant: Path, sender: MailboxUser, new_mailbox_user: NewUser
) -> None:
    port = postfix.smtps_port
    ok(set_server(tenant, port, "smtps", sender))
    with edit_keystore(Tenant(tenant)) as keystore:
        keystore.delete("test-root")
    settings = (tenant / "notify.json").read_bytes()

    expected_chain = (
        f"MessagingException: Could not connect to SMTP host: 127.0.0.1, port: {port};\n"
        "  nested exception is:\n"
        "\tSSLHandshakeException: PKIX path building failed: unable to find valid "
        "certification path to requested target"
    )
    hint = f"run `flowrt test smtp 127.0.0.1:{port} --protection smtps --import`"
    refused = set_server(tenant, port, "smtps", sender)
    tested = flowrt(tenant, "notify", "server", "test", "--to", new_mailbox_user().address)
    for result in (refused, tested):
        assert result.exit_code == 1, result.output
        assert expected_chain in result.output, result.output
        assert INTERMEDIATE in result.output and hint in result.output
        assert "Traceback" not in result.output
    assert (tenant / "notify.json").read_bytes() == settings
