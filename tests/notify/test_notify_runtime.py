"""`flowrt run` with the notifier: a notification server that is down does not hold up the
flows; the failed alert is recorded with its chain and waits for its retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from flowrt.notify.config import NotifyServer, edit_config, replace
from flowrt.tenant import Tenant
from tests.notify.conftest import flowrt, ok
from tests.servers import DovecotServer, MailboxUser, PostfixServer, TestCA, free_port

pytestmark = pytest.mark.servers

FLOW = """flow {name} {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "{name}-in"
        poll          every 1s
        timeout       10s
    }}
    receiver mail out {{
        address       "127.0.0.1:{smtps}"
        protection    smtps
        auth          plain credential "{name}-in"
        from          "{login}"
        to            "{to}"
        timeout       10s
    }}
}}
"""


def credential(tenant: Path, name: str, user: MailboxUser) -> None:
    ok(
        flowrt(
            tenant,
            "credentials",
            "add",
            name,
            "--user",
            user.address,
            "--password-stdin",
            input=user.password,
        )
    )


def a_mail(subject: str) -> bytes:
    message = EmailMessage()
    message["From"] = "billing@supplier.example"
    message["To"] = "plant@example.com"
    message["Subject"] = subject
    message.set_content("Hello.")
    return bytes(message)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_notification_server_that_is_down_does_not_stop_processing(
    bare_tenant: Path,
    test_ca: TestCA,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
    tmp_path: Path,
) -> None:
    tenant = bare_tenant
    ca = tmp_path / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    ok(flowrt(tenant, "keystore", "add", "test-root", str(ca)))
    good_in, bad_in, target = (new_mailbox_user(p) for p in ("good", "bad", "dst"))
    for name, user, to in (
        ("good", good_in, target.address),
        ("bad", bad_in, "nobody@example.com"),  # Postfix refuses it: the message fails
    ):
        credential(tenant, f"{name}-in", user)
        flow = tmp_path / f"{name}.flow"
        flow.write_text(
            FLOW.format(
                name=name,
                imap=dovecot.imap_port,
                smtps=postfix.smtps_port,
                login=user.address,
                to=to,
            )
        )
        ok(flowrt(tenant, "deploy", str(flow)))
    down = NotifyServer("127.0.0.1", free_port(), "smtps", "flowrt@example.com", timeout=5)
    with edit_config(Tenant(tenant)) as edit:
        edit.value = replace(edit.value, server=down)
    ok(
        flowrt(
            tenant,
            "notify",
            "rule",
            "add",
            "all",
            "--on",
            "message-failed",
            "--to",
            "ops@example.com",
        )
    )

    log = (tmp_path / "runtime.log").open("w")
    proc = subprocess.Popen(
        ["flowrt", "--tenant", str(tenant), "run", "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        dovecot.append(bad_in.address, "INBOX", a_mail("will fail"))
        dovecot.append(good_in.address, "INBOX", a_mail("goes through"))

        def failed_alerts() -> list[dict[str, object]]:
            out = flowrt(tenant, "notify", "log", "--format", "json").output
            return [a for a in json.loads(out) if a["status"] == "failed"]

        wait_for(lambda: bool(failed_alerts()), "the alert attempt")
        dovecot.wait_for_message(target.address, timeout=30)
        dovecot.append(good_in.address, "INBOX", a_mail("and the next one"))
        wait_for(lambda: len(dovecot.messages(target.address)) == 2, "the second mail")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "runtime.log").read_text()
    # a failed mail stays in its mailbox and fails again on the next poll: one alert each
    alerts = failed_alerts()
    # (one try per cycle: the others of that cycle wait for their retry without a try)
    assert alerts and all(a["next_try"] for a in alerts)
    assert {a["tries"] for a in alerts} <= {0, 1} and alerts[-1]["tries"] == 1
    assert all("ConnectException: Connection refused" in str(a["chain"]) for a in alerts)
    failed = json.loads(
        ok(flowrt(tenant, "mpl", "list", "--flow", "bad", "--format", "json")).output
    )
    assert {a["mpl_id"] for a in alerts} <= {e["message_id"] for e in failed}
    assert {e["status"] for e in failed} <= {"FAILED", "ESCALATED"}
    runtime_log = (tmp_path / "runtime.log").read_text()
    for user in (good_in, bad_in, target):
        assert user.password not in runtime_log


def test_run_once_sends_the_alerts_of_its_run(
    bare_tenant: Path,
    test_ca: TestCA,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
    tmp_path: Path,
) -> None:
    """`flowrt run --once` from cron: a message that failed in this run is alerted before the
    command exits (here the notification server is down, so the attempt is recorded with its
    chain and a next try, which the next `--once` takes up)."""
    tenant = bare_tenant
    ca = tmp_path / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    ok(flowrt(tenant, "keystore", "add", "test-root", str(ca)))
    bad_in = new_mailbox_user("once")
    credential(tenant, "bad-in", bad_in)
    flow = tmp_path / "bad.flow"
    flow.write_text(
        FLOW.format(
            name="bad",
            imap=dovecot.imap_port,
            smtps=postfix.smtps_port,
            login=bad_in.address,
            to="nobody@example.com",
        )
    )
    ok(flowrt(tenant, "deploy", str(flow)))
    down = NotifyServer("127.0.0.1", free_port(), "smtps", "flowrt@example.com", timeout=5)
    with edit_config(Tenant(tenant)) as edit:
        edit.value = replace(edit.value, server=down)
    ok(
        flowrt(
            tenant,
            "notify",
            "rule",
            "add",
            "all",
            "--on",
            "message-failed",
            "--to",
            "ops@x.example",
        )
    )
    dovecot.append(bad_in.address, "INBOX", a_mail("will fail"))

    run = subprocess.run(
        ["flowrt", "--tenant", str(tenant), "run", "--once", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stderr  # the message failed
    alerts = json.loads(ok(flowrt(tenant, "notify", "log", "--format", "json")).output)
    assert len(alerts) == 1
    assert alerts[0]["status"] == "failed" and alerts[0]["next_try"]
    assert "ConnectException: Connection refused" in str(alerts[0]["chain"])
    assert bad_in.password not in run.stdout + run.stderr
