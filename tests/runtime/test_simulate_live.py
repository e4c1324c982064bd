"""flowrt simulate --live sends for real through the receiver (the default only captures)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from tests.servers import DovecotServer, MailboxUser, PostfixServer

pytestmark = pytest.mark.servers
MAIL = b"From: a@supplier.example\r\nTo: plant@example.com\r\nSubject: live one\r\n\r\nHi.\r\n"


def flowrt(tenant: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)


def setup(
    tmp_path: Path,
    test_ca: Any,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    target: MailboxUser,
) -> tuple[Path, Path, Path]:
    tenant = tmp_path / "tenant"
    assert flowrt(tenant, "init").exit_code == 0
    (tmp_path / "ca.pem").write_bytes(test_ca.cert_pem)
    assert flowrt(tenant, "keystore", "add", "root", str(tmp_path / "ca.pem")).exit_code == 0
    assert (
        flowrt(
            tenant,
            "credentials",
            "add",
            "smtp-out",
            "--user",
            "accounting@example.com",
            "--password-stdin",
            input=dovecot.password("accounting@example.com"),
        ).exit_code
        == 0
    )
    flow = tmp_path / "live.flow"
    flow.write_text(f"""flow live {{
    sender mail {{
        protocol imap
        address "127.0.0.1:{dovecot.imap_port}"
        auth plain credential "in"
    }}
    receiver mail out {{
        address "127.0.0.1:{postfix.smtps_port}"
        protection smtps
        auth encrypted credential "smtp-out"
        from "flowrt@example.com"
        to "{target.address}"
    }}
}}
""")
    message = tmp_path / "m.eml"
    message.write_bytes(MAIL)
    return tenant, flow, message


def test_live_sends_for_real(
    tmp_path: Path,
    test_ca: Any,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
) -> None:
    target = new_mailbox_user()
    tenant, flow, message = setup(tmp_path, test_ca, dovecot, postfix, target)
    captured = flowrt(tenant, "simulate", str(flow), "--message", str(message))
    assert captured.exit_code == 0, captured.output
    assert "nothing is sent" in captured.output
    assert dovecot.messages(target.address, "INBOX") == []

    live = flowrt(tenant, "simulate", str(flow), "--message", str(message), "--live")
    assert live.exit_code == 0, live.output
    assert "LIVE: the receivers send for real" in live.output
    assert f"sent to 127.0.0.1:{postfix.smtps_port}: 250" in live.output
    arrived = dovecot.wait_for_message(target.address, "INBOX", timeout=20)
    parsed = email.message_from_bytes(arrived[2], policy=email.policy.default)
    assert parsed["Subject"] == "live one"


def test_live_failure_is_a_chain_and_exit_1(
    tmp_path: Path,
    test_ca: Any,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
) -> None:
    tenant, flow, message = setup(tmp_path, test_ca, dovecot, postfix, new_mailbox_user())
    flowrt(tenant, "keystore", "delete", "root")
    result = flowrt(tenant, "simulate", str(flow), "--message", str(message), "--live")
    assert result.exit_code == 1
    assert "Could not connect to SMTP host" in result.output
    assert "SSLHandshakeException" in result.output
    assert "Traceback" not in result.output


def test_live_needs_a_tenant(tmp_path: Path) -> None:
    flow = Path(__file__).resolve().parents[2] / "flows" / "mail.flow"
    (tmp_path / "m.eml").write_bytes(MAIL)
    result = flowrt(
        tmp_path / "none", "simulate", str(flow), "--message", str(tmp_path / "m.eml"), "--live"
    )
    assert result.exit_code == 1
    assert "no tenant at" in result.output
