"""flowrt test smtp against real Postfix (and scripted servers for what Postfix won't do)."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.connectivity.conftest import Run, add_login
from tests.servers import DovecotServer, PostfixServer

PASSWORD = "accounting-secret"


def smtp_login(
    flowrt: Run,
    dovecot: DovecotServer,
    user: str = "accounting@example.com",
    name: str = "smtp-out",
    password: str | None = None,
) -> None:
    add_login(flowrt, name, user, password or dovecot.password(user))


def test_empty_keystore_fails_then_import_fixes_it(flowrt: Run, postfix: PostfixServer) -> None:
    target = f"127.0.0.1:{postfix.smtps_port}"
    first = flowrt("test", "smtp", target, "--protection", "smtps")
    assert first.exit_code == 1
    assert "MessagingException: Could not connect to SMTP host: 127.0.0.1, port:" in first.output
    assert "nested exception is:" in first.output
    assert "SSLHandshakeException: PKIX path building failed" in first.output
    assert "issued by CN=" in first.output
    assert "hint: the tenant keystore has no certificate for CN=" in first.output
    assert "not trusted by the keystore" in first.output
    assert first.output.rstrip().splitlines()[-1].startswith("verdict: FAILED")

    fixed = flowrt("test", "smtp", target, "--protection", "smtps", "--import", "mailroot")
    assert fixed.exit_code == 0, fixed.output
    assert "imported mailroot" in fixed.output
    assert fixed.output.rstrip().splitlines()[-1].startswith("verdict: OK")

    again = flowrt("test", "smtp", target, "--protection", "smtps")
    assert again.exit_code == 0, again.output
    assert "TLSv1." in again.output
    assert "issued by a trusted certificate (keystore alias mailroot)" in again.output
    listing = flowrt("keystore", "list", "--format", "json")
    assert "mailroot" in listing.output


@pytest.mark.usefixtures("trusted")
def test_starttls_with_auth_and_addresses(
    flowrt: Run, postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    smtp_login(flowrt, dovecot)
    result = flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.submission_port}",
        "--auth",
        "plain",
        "--credential",
        "smtp-out",
        "--from",
        "accounting@example.com",
        "--to",
        "archive@example.com",
    )
    assert result.exit_code == 0, result.output
    stages = [
        line.split()[0]
        for line in result.output.splitlines()
        if line.startswith("  ")
        and line.split()
        and line.split()[0]
        in ("connect", "greeting", "capabilities", "tls", "certificate", "auth", "mail", "rcpt")
    ]
    assert stages[:6] == [
        "connect",
        "greeting",
        "capabilities",
        "tls",
        "certificate",
        "capabilities",
    ]
    assert "auth" in stages and "rcpt" in stages
    assert "235" in result.output
    assert PASSWORD not in result.output


@pytest.mark.usefixtures("trusted")
def test_cram_md5(flowrt: Run, postfix: PostfixServer, dovecot: DovecotServer) -> None:
    smtp_login(flowrt, dovecot)
    result = flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.smtps_port}",
        "--protection",
        "smtps",
        "--auth",
        "encrypted",
        "--credential",
        "smtp-out",
    )
    assert result.exit_code == 0, result.output
    assert "auth" in result.output and "235" in result.output


@pytest.mark.usefixtures("trusted")
def test_wrong_password_is_an_authentication_failure(
    flowrt: Run, postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    smtp_login(flowrt, dovecot, password="wrong-password-123")
    result = flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.submission_port}",
        "--auth",
        "plain",
        "--credential",
        "smtp-out",
    )
    assert result.exit_code == 1
    assert "AuthenticationFailedException: 535" in result.output
    assert "check credential 'smtp-out'" in result.output
    assert "wrong-password-123" not in result.output


@pytest.mark.usefixtures("trusted")
def test_unknown_recipient_is_refused(
    flowrt: Run, postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    result = flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.smtp_port}",
        "--from",
        "someone@example.com",
        "--to",
        "nobody-here@example.com",
    )
    assert result.exit_code == 1
    assert "550" in result.output


def test_plain_auth_without_tls_is_refused(
    flowrt: Run, postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    smtp_login(flowrt, dovecot)
    result = flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.smtp_port}",
        "--protection",
        "off",
        "--auth",
        "plain",
        "--credential",
        "smtp-out",
    )
    assert result.exit_code == 1
    assert (
        "refusing to send the password of credential 'smtp-out' in clear: the connection to "
        f"127.0.0.1:{postfix.smtp_port} is not encrypted (protection off)"
    ) in result.output


def test_starttls_mandatory_without_starttls(
    flowrt: Run, scripted_smtp: Callable[..., Any]
) -> None:
    server = scripted_smtp()
    result = flowrt("test", "smtp", f"127.0.0.1:{server.port}")
    assert result.exit_code == 1
    assert "does not offer STARTTLS" in result.output


def test_no_validate_and_download(flowrt: Run, postfix: PostfixServer, tmp_path: Path) -> None:
    archive = tmp_path / "chain.zip"
    result = flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.smtps_port}",
        "--protection",
        "smtps",
        "--no-validate",
        "--download",
        str(archive),
    )
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(io.BytesIO(archive.read_bytes())) as files:
        names = files.namelist()
        certs = [x509.load_der_x509_certificate(files.read(n)) for n in names]
    assert len(certs) >= 1 and names[0].startswith("0-") and names[0].endswith(".cer")
    assert "localhost" in str(certs[0].subject) or certs[0].subject


def test_json_output(flowrt: Run, postfix: PostfixServer) -> None:
    result = flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.smtps_port}",
        "--protection",
        "smtps",
        "--format",
        "json",
    )
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["ok"] is False
    assert doc["error"]["levels"][0]["type"] == "MessagingException"
    assert doc["error"]["levels"][1]["type"] == "SSLHandshakeException"
    assert doc["chain"]


@pytest.mark.usefixtures("trusted")
def test_password_appears_in_no_file_and_no_output(
    flowrt: Run, tenant: Path, postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    smtp_login(flowrt, dovecot)
    outputs = [
        flowrt(
            "test",
            "smtp",
            f"127.0.0.1:{postfix.submission_port}",
            "--auth",
            "plain",
            "--credential",
            "smtp-out",
        ).output,
        flowrt("credentials", "list").output,
        flowrt("credentials", "show", "smtp-out").output,
        flowrt("credentials", "list", "--format", "json").output,
    ]
    needles = [PASSWORD.encode(), base64.b64encode(PASSWORD.encode())]
    for path in tenant.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(n in data for n in needles), path
    for output in outputs:
        assert PASSWORD not in output


@pytest.mark.usefixtures("trusted")
def test_credential_alone_logs_in_with_plain_as_imap_and_pop3_do(
    flowrt: Run, postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    smtp_login(flowrt, dovecot, password="wrong-password-456")
    target = f"127.0.0.1:{postfix.submission_port}"
    result = flowrt("test", "smtp", target, "--credential", "smtp-out")
    # a wrong password must fail: the login was really tried, not skipped
    assert result.exit_code == 1, result.output
    assert "AuthenticationFailedException: 535" in result.output
    assert flowrt("test", "smtp", target, "--auth", "none").exit_code == 0
