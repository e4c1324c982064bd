"""What ``flowrt test`` does alike for several protocols, against the same real servers: a
refused port and an unknown host (SMTP, IMAP, POP3); and, on one Dovecot, for IMAP and POP3:
a port of the other protocol, a wrong password, a certificate for another name, and
``--no-validate --download``."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.connectivity.conftest import Run, add_login
from tests.connectivity.mail_helpers import failed_stage
from tests.servers import DovecotServer, MailboxUser, TestCA, free_port


@pytest.mark.parametrize(
    ("protocol", "unknown", "unknown_error"),
    [
        (  # the receiver's (JavaMail's) wording for a connection that could not be made
            "smtp",
            ("no-such-host.invalid:25",),
            "MailConnectException: Couldn't connect to host, port: no-such-host.invalid, 25",
        ),
        (
            "imap",
            ("no-such-host.invalid",),
            "Could not connect to IMAP host: no-such-host.invalid, port: 143",
        ),
        (
            "pop3",
            ("no-such-host.invalid", "--protection", "pop3s"),
            "Could not connect to POP3 host: no-such-host.invalid, port: 995",
        ),
    ],
)
def test_refused_port_and_unknown_host(
    flowrt: Run, protocol: str, unknown: tuple[str, ...], unknown_error: str
) -> None:
    refused = flowrt("test", protocol, f"127.0.0.1:{free_port()}", "--timeout", "5s")
    assert refused.exit_code == 1
    refused_text = (
        "MailConnectException: Couldn't connect to host, port: 127.0.0.1"
        if protocol == "smtp"
        else f"MessagingException: Could not connect to {protocol.upper()} host: 127.0.0.1"
    )
    assert refused_text in refused.output
    assert "ConnectException: Connection refused" in refused.output
    assert "hint: nothing listens on" in refused.output
    unknown_host = flowrt("test", protocol, *unknown, "--timeout", "5s")
    assert unknown_host.exit_code == 1
    assert unknown_error in unknown_host.output
    assert "UnknownHostException" in unknown_host.output


@pytest.mark.parametrize(
    ("protocol", "other", "refusal", "question"),
    [
        ("imap", "pop3", "not an IMAP greeting: +OK", "an IMAP port?"),
        ("pop3", "imap", "not a POP3 greeting: * OK", "a POP3 port?"),
    ],
)
def test_a_port_of_the_other_protocol(
    flowrt: Run, dovecot: DovecotServer, protocol: str, other: str, refusal: str, question: str
) -> None:
    port = dovecot.ports()[other]
    result = flowrt("test", protocol, f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"MessagingException: {refusal}" in result.output
    assert f"hint: is 127.0.0.1:{port} {question}" in result.output
    assert failed_stage(result.output) == "greeting"


@pytest.mark.parametrize(
    ("protocol", "mailbox_option", "refusal"),
    [
        ("imap", "--list-folders", "[AUTHENTICATIONFAILED] Authentication failed"),
        ("pop3", "--check-mailbox", "[AUTH] Authentication failed"),
    ],
)
@pytest.mark.usefixtures("trusted")
def test_wrong_password_is_an_authentication_failure(
    flowrt: Run,
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    protocol: str,
    mailbox_option: str,
    refusal: str,
) -> None:
    add_login(flowrt, "box", mailbox_user.address, "wrong-password-123")
    target = f"127.0.0.1:{dovecot.ports()[protocol]}"
    result = flowrt("test", protocol, target, "--credential", "box", mailbox_option)
    assert result.exit_code == 1
    assert f"AuthenticationFailedException: {refusal}" in result.output
    assert (
        f"hint: check the user and password of credential 'box' (user {mailbox_user.address})"
        in result.output
    )
    assert failed_stage(result.output) == "auth"
    assert "wrong-password-123" not in result.output


@pytest.mark.parametrize(
    ("protocol", "port", "protection"),
    [("imap", "imaps", ("--protection", "imaps")), ("pop3", "pop3", ())],
    ids=["imaps", "pop3-stls"],
)
@pytest.mark.usefixtures("trusted")
def test_hostname_mismatch(
    flowrt: Run,
    wrong_name_dovecot: DovecotServer,
    protocol: str,
    port: str,
    protection: tuple[str, ...],
) -> None:
    # by name: an IP address is checked by OpenSSL as an IP (another verify code)
    target = f"localhost:{wrong_name_dovecot.ports()[port]}"
    result = flowrt("test", protocol, target, *protection)
    assert result.exit_code == 1
    assert (
        f"MessagingException: Could not connect to {protocol.upper()} host: localhost"
        in result.output
    )
    assert "SSLHandshakeException: No subject alternative names matching localhost" in (
        result.output
    )
    assert "hint: the server's certificate is for wrong.example" in result.output
    assert "CN=wrong.example" in result.output  # the chain is shown


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_no_validate_and_download(
    flowrt: Run,
    dovecot: DovecotServer,
    test_intermediate_ca: TestCA,
    tmp_path: Path,
    protocol: str,
) -> None:
    archive = tmp_path / "chain.zip"
    result = flowrt(
        "test",
        protocol,
        f"127.0.0.1:{dovecot.ports()[protocol]}",
        "--no-validate",
        "--download",
        str(archive),
    )
    assert result.exit_code == 0, result.output
    assert "saved the chain (2 certificates)" in result.output
    assert "not trusted by the keystore" in result.output  # shown, not validated
    with zipfile.ZipFile(io.BytesIO(archive.read_bytes())) as files:
        names = files.namelist()
        certs = [x509.load_der_x509_certificate(files.read(n)) for n in names]
    assert names == ["0-localhost.cer", "1-flowrt-test-intermediate-ca.cer"]
    assert dovecot.cert is not None
    assert certs[0] == dovecot.cert.certificate
    assert certs[0].issuer == certs[1].subject
    intermediate = x509.load_pem_x509_certificate(test_intermediate_ca.cert_pem)
    assert certs[1].public_bytes(serialization.Encoding.DER) == intermediate.public_bytes(
        serialization.Encoding.DER
    )
