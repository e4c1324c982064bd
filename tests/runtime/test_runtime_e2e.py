"""The runtime end to end with the real stack: Dovecot -> deployed flow -> Postfix -> Dovecot.

``flowrt run`` runs as a subprocess, as in production; the tests drive it with the CLI and
read the mailboxes with an independent IMAP client.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from tests.servers import DovecotServer, MailboxUser, PostfixServer

pytestmark = pytest.mark.servers


def flowrt(tenant: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)


class Runtime:
    """``flowrt run`` in a subprocess, stopped with SIGTERM."""

    def __init__(self, tenant: Path, *args: str) -> None:
        self.log = tenant.parent / f"runtime-{time.monotonic_ns()}.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            ["flowrt", "--tenant", str(tenant), "run", "--log-format", "json", *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        status = tenant / "runtime" / "status.json"
        deadline = time.monotonic() + 20
        while not (status.exists() and self._fresh(status)):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the runtime did not start"
            time.sleep(0.05)

    def _fresh(self, status: Path) -> bool:
        return str(self.proc.pid) in status.read_text()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log_file.close()
        return code


@pytest.fixture
def tenant(tmp_path: Path, test_ca: Any) -> Path:
    root = tmp_path / "tenant"
    assert flowrt(root, "init").exit_code == 0
    ca = tmp_path / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    assert flowrt(root, "keystore", "add", "test-root", str(ca)).exit_code == 0
    return root


@pytest.fixture
def runtimes(tenant: Path) -> Iterator[Callable[..., Runtime]]:
    started: list[Runtime] = []

    def start(*args: str) -> Runtime:
        runtime = Runtime(tenant, *args)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        if runtime.proc.poll() is None:
            runtime.stop()


def add_user_credential(tenant: Path, name: str, user: MailboxUser) -> None:
    result = flowrt(
        tenant,
        "credentials",
        "add",
        name,
        "--user",
        user.address,
        "--password-stdin",
        input=user.password,
    )
    assert result.exit_code == 0, result.output


FLOW = """flow {name} {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "{source_credential}"
        post-process  mark-read
        poll          every 1s
        timeout       10s
    }}
    pipeline {{
        set header "X-Flow" = "{name}"
{steps}
    }}
    receiver mail out {{
        address       "127.0.0.1:{smtps}"
        protection    smtps
        auth          encrypted credential "smtp-out"
        from          "flowrt@example.com"
        to            "{target}"
        subject       "{prefix}${{header.Subject}}"
        attachments   from-message
        timeout       10s
    }}
}}
"""


def write_flow(path: Path, stack: dict[str, Any], **values: Any) -> Path:
    """A flow from ``stack``'s source mailbox to its target, through the real servers."""
    values.setdefault("steps", "")
    values.setdefault("prefix", "Fwd: ")
    values.setdefault("source_credential", "source")
    values.setdefault("imap", stack["imap"])
    values.setdefault("smtps", stack["smtps"])
    values.setdefault("target", stack["target"].address)
    path.write_text(FLOW.format(**values))
    return path


def mail(subject: str, body: str = "Hello.", attachment: bytes | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "Supplier <billing@supplier.example>"
    message["To"] = "plant@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<{time.monotonic_ns()}@supplier.example>"
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="pdf", filename="Rechnung März.pdf"
        )
    return message.as_bytes(policy=email.policy.SMTP)


def subjects(dovecot: DovecotServer, user: str) -> list[str]:
    found = []
    for _uid, _flags, raw in dovecot.messages(user, "INBOX"):
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        found.append(str(parsed["Subject"]))
    return found


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def stack(
    tenant: Path,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
) -> dict[str, Any]:
    source, target = new_mailbox_user(prefix="src"), new_mailbox_user(prefix="dst")
    add_user_credential(tenant, "source", source)
    add_user_credential(
        tenant,
        "smtp-out",
        MailboxUser("accounting@example.com", dovecot.password("accounting@example.com")),
    )
    return {
        "source": source,
        "target": target,
        "imap": dovecot.imap_port,
        "smtps": postfix.smtps_port,
        "tenant": tenant,
    }


def test_mail_goes_from_the_source_mailbox_to_the_target_mailbox(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    flow = write_flow(tmp_path / "forward.flow", stack, name="forward")
    pdf = b"%PDF-1.4\n% Rechnung\n%%EOF\n"
    dovecot.append(
        source.address, "INBOX", mail("Rechnung Nr. 7 über 100 €", "Betrag: 100 €", attachment=pdf)
    )
    runtime = runtimes()
    deployed = flowrt(tenant, "deploy", str(flow))
    assert deployed.exit_code == 0, deployed.output
    assert "forward: STARTED (version 1)" in deployed.output

    arrived = dovecot.wait_for_message(target.address, "INBOX", timeout=30)
    message = email.message_from_bytes(arrived[2], policy=email.policy.default)
    assert message["Subject"] == "Fwd: Rechnung Nr. 7 über 100 €"
    assert message["X-Flow"] == "forward"
    assert message["From"] == "flowrt@example.com"
    body = message.get_body(("plain",))
    assert body is not None and "Betrag: 100 €" in body.get_content()
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == "Rechnung März.pdf"
    assert attachment.get_payload(decode=True) == pdf
    wait_for(
        lambda: all(
            "\\Seen" in flags for _u, flags, _r in dovecot.messages(source.address, "INBOX")
        ),
        what="mark-read",
    )

    time.sleep(1.2)  # a heartbeat
    status = flowrt(tenant, "status")
    assert "runtime: running" in status.output
    row = next(line for line in status.output.splitlines() if line.startswith("forward"))
    assert "STARTED" in row and " 1 " in row
    assert runtime.stop() == 0
    listing = flowrt(tenant, "mpl", "list", "--flow", "forward", "--status", "COMPLETED")
    assert listing.output.count("forward") == 1

    # the runtime log: one JSON object per line; lines about the message name it and the
    # flow; no password in the log, the MPL or any other file of the tenant
    lines = [json.loads(line) for line in runtime.log.read_text().splitlines()]
    about_message = [line for line in lines if "message_id" in line]
    assert about_message and all(line["flow"] == "forward" for line in about_message)
    secrets = [source.password, dovecot.password("accounting@example.com")]
    files = [runtime.log, *(p for p in tenant.rglob("*") if p.is_file())]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path
            assert base64.b64encode(secret.encode()) not in data, path


def test_deploy_while_running_picks_up_the_new_version(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    flow = write_flow(tmp_path / "versions.flow", stack, name="versions", prefix="v1: ")
    runtimes()
    assert "STARTED (version 1)" in flowrt(tenant, "deploy", str(flow)).output
    dovecot.append(source.address, "INBOX", mail("first"))
    wait_for(lambda: "v1: first" in subjects(dovecot, target.address), what="v1 mail")

    write_flow(flow, stack, name="versions", prefix="v2: ")
    redeployed = flowrt(tenant, "deploy", str(flow))
    assert redeployed.exit_code == 0, redeployed.output
    assert "deployed versions version 2" in redeployed.output
    assert "versions: STARTED (version 2)" in redeployed.output
    dovecot.append(source.address, "INBOX", mail("second"))
    wait_for(lambda: "v2: second" in subjects(dovecot, target.address), what="v2 mail")
    assert sorted(subjects(dovecot, target.address)) == ["v1: first", "v2: second"]


def test_sigterm_during_a_batch_loses_nothing_and_sends_nothing_twice(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    (tmp_path / "slow.py").write_text("import time\n\ndef pause(exchange):\n    time.sleep(0.3)\n")
    flow = write_flow(
        tmp_path / "batch.flow", stack, name="batch", steps='        script "slow:pause"'
    )
    count = 20  # more than the flow keeps in flight (8): some are not started at SIGTERM
    for index in range(count):
        dovecot.append(source.address, "INBOX", mail(f"mail {index}"))
    runtime = runtimes("--grace", "0.1s")
    assert flowrt(tenant, "deploy", str(flow)).exit_code == 0
    wait_for(lambda: len(subjects(dovecot, target.address)) >= 2, what="the batch to start")
    assert runtime.stop() == 0
    after_stop = subjects(dovecot, target.address)
    assert len(after_stop) < count, "the batch finished before SIGTERM; the test proves nothing"

    runtimes()  # a new runtime takes over what was handed back
    wait_for(lambda: len(subjects(dovecot, target.address)) >= count, what="the rest")
    time.sleep(2.5)  # two more polls: nothing may come twice
    arrived = subjects(dovecot, target.address)
    assert sorted(arrived) == sorted(f"Fwd: mail {i}" for i in range(count))
    assert all("\\Seen" in flags for _u, flags, _r in dovecot.messages(source.address, "INBOX"))


def test_a_flow_with_a_wrong_password_fails_while_the_other_runs_on(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    new_mailbox_user: Callable[..., MailboxUser],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    # a mailbox of its own: on the good flow's mailbox it would, as often as not, find the
    # mailbox's lease taken by the good flow and never get as far as logging in
    other = new_mailbox_user(prefix="bad")
    assert (
        flowrt(
            tenant,
            "credentials",
            "add",
            "wrong",
            "--user",
            other.address,
            "--password-stdin",
            input="not-the-password",
        ).exit_code
        == 0
    )
    good = write_flow(tmp_path / "good.flow", stack, name="good")
    bad = write_flow(tmp_path / "bad.flow", stack, name="bad", source_credential="wrong")
    runtimes()
    assert flowrt(tenant, "deploy", str(good), str(bad)).exit_code == 0
    dovecot.append(source.address, "INBOX", mail("still flowing"))
    wait_for(
        lambda: "Fwd: still flowing" in subjects(dovecot, target.address),
        what="the good flow's mail",
    )

    def bad_flow_row() -> str:
        output = flowrt(tenant, "status").output
        return next((line for line in output.splitlines() if line.startswith("bad ")), "")

    wait_for(lambda: "ERROR" in bad_flow_row(), what="the bad flow in ERROR")
    assert "AuthenticationFailedException" in bad_flow_row()
    good_row = next(
        line for line in flowrt(tenant, "status").output.splitlines() if line.startswith("good ")
    )
    assert "STARTED" in good_row


def test_a_second_runtime_refuses_to_start(tenant: Path, runtimes: Callable[..., Runtime]) -> None:
    runtimes()
    second = subprocess.run(
        ["flowrt", "--tenant", str(tenant), "run"], capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert "another flowrt run is already running on this tenant" in second.stderr
    assert "Traceback" not in second.stderr


def test_deploying_an_invalid_flow_changes_nothing_that_runs(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    tenant = stack["tenant"]
    flow = write_flow(tmp_path / "steady.flow", stack, name="steady")
    runtimes()
    assert "STARTED (version 1)" in flowrt(tenant, "deploy", str(flow)).output
    flow.write_text(flow.read_text().replace("poll          every 1s", "poll every 1x"))
    refused = flowrt(tenant, "deploy", str(flow))
    assert refused.exit_code == 1 and "bad duration" in refused.output
    time.sleep(1.2)
    row = next(
        line for line in flowrt(tenant, "status").output.splitlines() if line.startswith("steady")
    )
    assert "STARTED" in row and " 1 " in row.split("STARTED")[0]


def test_no_tenant_is_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        ["flowrt", "--tenant", str(tmp_path / "none"), "run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no tenant at" in result.stderr and "init" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_polling_flow_logs_in_once_and_logs_out_when_undeployed_or_stopped(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    flow = write_flow(tmp_path / "kept.flow", stack, name="kept")  # poll every 1s
    runtime = runtimes()
    assert flowrt(tenant, "deploy", str(flow)).exit_code == 0
    wait_for(lambda: dovecot.sessions(source.address) == 1, what="the first poll")
    before = dovecot.logins(source.address)
    dovecot.append(source.address, "INBOX", mail("kept"))  # (one login of its own)
    wait_for(lambda: "Fwd: kept" in subjects(dovecot, target.address), what="the mail")
    time.sleep(2.5)  # more polls
    assert dovecot.logins(source.address) == before + 1
    assert dovecot.sessions(source.address) == 1

    assert flowrt(tenant, "undeploy", "kept").exit_code == 0
    wait_for(lambda: dovecot.sessions(source.address) == 0, what="the logout at undeploy")
    assert flowrt(tenant, "deploy", str(flow)).exit_code == 0
    wait_for(lambda: dovecot.sessions(source.address) == 1, what="the first poll again")
    assert runtime.stop() == 0
    wait_for(lambda: dovecot.sessions(source.address) == 0, 5, what="the logout at stop")


def test_a_25_mb_attachment_is_forwarded_byte_for_byte(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    flow = write_flow(tmp_path / "big.flow", stack, name="big")
    pdf = b"%PDF-1.4\n" + os.urandom(25 * 1024 * 1024)
    dovecot.append(source.address, "INBOX", mail("big", attachment=pdf))
    runtime = runtimes()
    assert flowrt(tenant, "deploy", str(flow)).exit_code == 0

    def count() -> int:
        with dovecot.imap(target.address) as client:
            _, data = client.select("INBOX", readonly=True)
        return int((data[0] or b"0").decode())

    wait_for(lambda: count() == 1, 60, what="the forwarded mail")
    assert runtime.stop() == 0
    ((_uid, _flags, raw),) = dovecot.messages(target.address)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == "Rechnung März.pdf"
    assert attachment.get_payload(decode=True) == pdf
