"""Deployed flows as self-contained artifacts, with real servers: one flow file, two
tenants, two parameter sets, two Dovecot mailboxes; scripts run as deployed, not as edited;
a changed parameter reaches the running runtime like a deploy."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.runtime import test_runtime_e2e as e2e
from tests.runtime.test_runtime_e2e import (
    Runtime,
    add_user_credential,
    flowrt,
    mail,
    subjects,
    wait_for,
)
from tests.servers import DovecotServer, MailboxUser, PostfixServer

pytestmark = pytest.mark.servers

# the deployed-flow tests' fixtures: a tenant trusting the test CA, runtimes, the mail stack
tenant = e2e.tenant
runtimes = e2e.runtimes
stack = e2e.stack

FLOW = """flow forward {
    sender mail {
        protocol      imap
        address       "127.0.0.1:${param.IMAP_PORT}"
        protection    starttls-mandatory
        auth          plain credential "source"
        post-process  mark-read
        poll          every 1s
        timeout       10s
    }
    pipeline {
        set header "X-Stage" = "${param.STAGE:dev}"
%(steps)s
    }
    receiver mail out {
        address       "127.0.0.1:${param.SMTPS_PORT}"
        protection    smtps
        auth          encrypted credential "smtp-out"
        from          "flowrt@example.com"
        to            "${param.TARGET}"
        subject       "[${param.STAGE:dev}] ${header.Subject}"
        timeout       10s
    }
}
"""


def new_tenant(root: Path, ca_pem: bytes) -> Path:
    assert flowrt(root, "init").exit_code == 0
    ca = root.parent / f"{root.name}-ca.pem"
    ca.write_bytes(ca_pem)
    assert flowrt(root, "keystore", "add", "test-root", str(ca)).exit_code == 0
    return root


def run_once(tenant: Path) -> None:
    done = subprocess.run(
        ["flowrt", "--tenant", str(tenant), "run", "--once", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def received(
    dovecot: DovecotServer, user: str, count: int | None = None
) -> list[email.message.EmailMessage]:
    """The mails in ``user``'s INBOX, once there are ``count`` of them (Postfix delivers
    in the background)."""
    if count is not None:
        wait_for(lambda: len(dovecot.messages(user, "INBOX")) >= count, what=f"{count} mail(s)")
    return [
        email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
        for _uid, _flags, raw in dovecot.messages(user, "INBOX")
    ]


def test_one_flow_file_two_tenants_two_parameter_sets_two_mailboxes(
    tmp_path: Path,
    test_ca: Any,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
) -> None:
    flow = tmp_path / "flows" / "forward.flow"
    flow.parent.mkdir()
    flow.write_text(FLOW % {"steps": ""})
    smtp_out = MailboxUser("accounting@example.com", dovecot.password("accounting@example.com"))
    mailboxes = {}
    for stage in ("dev", "prod"):
        tenant = new_tenant(tmp_path / stage, test_ca.cert_pem)
        source, target = new_mailbox_user(prefix=f"{stage}src"), new_mailbox_user(prefix=stage)
        add_user_credential(tenant, "source", source)
        add_user_credential(tenant, "smtp-out", smtp_out)
        mailboxes[stage] = (tenant, source, target)
        dovecot.append(source.address, "INBOX", mail(f"order for {stage}"))

    # dev: values kept in the tenant; the stage comes from the flow's default
    dev, _dev_source, dev_target = mailboxes["dev"]
    for name, value in (
        ("IMAP_PORT", str(dovecot.imap_port)),
        ("SMTPS_PORT", str(postfix.smtps_port)),
        ("TARGET", dev_target.address),
    ):
        result = flowrt(dev, "params", "set", "forward", name, value)
        assert result.exit_code == 0, result.output
    deployed = flowrt(dev, "deploy", str(flow))
    assert deployed.exit_code == 0, deployed.output

    # prod: a parameter file given at deploy
    prod, _prod_source, prod_target = mailboxes["prod"]
    params = tmp_path / "prod.toml"
    params.write_text(
        f"IMAP_PORT = {dovecot.imap_port}\nSMTPS_PORT = {postfix.smtps_port}\n"
        f'TARGET = "{prod_target.address}"\nSTAGE = "prod"\n'
    )
    deployed = flowrt(prod, "deploy", str(flow), "--params", str(params))
    assert deployed.exit_code == 0, deployed.output

    run_once(dev)
    run_once(prod)
    for _tenant, _source, target in mailboxes.values():
        dovecot.wait_for_message(target.address, "INBOX", timeout=30)
    (dev_mail,) = received(dovecot, dev_target.address)
    assert dev_mail["Subject"] == "[dev] order for dev" and dev_mail["X-Stage"] == "dev"
    (prod_mail,) = received(dovecot, prod_target.address)
    assert prod_mail["Subject"] == "[prod] order for prod" and prod_mail["X-Stage"] == "prod"

    listed = flowrt(prod, "params", "list", "forward", "--format", "json")
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["TARGET"]["deployed"] == prod_target.address
    assert rows["TARGET"]["source"] == f"file {params}"


def test_an_edited_script_changes_nothing_until_it_is_deployed_again(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    postfix: PostfixServer,
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    folder = tmp_path / "flows"
    folder.mkdir()
    flow = folder / "forward.flow"
    flow.write_text(FLOW % {"steps": '        script "tag:apply"'})
    (folder / "tag.py").write_text(
        "from labels import LABEL\n\n\ndef apply(exchange):\n"
        '    exchange.headers.set("X-Label", LABEL)\n'
    )
    (folder / "labels.py").write_text('LABEL = "as deployed"\n')
    params = tmp_path / "params.toml"
    params.write_text(
        f'IMAP_PORT = {stack["imap"]}\nSMTPS_PORT = {stack["smtps"]}\nTARGET = "{target.address}"\n'
    )
    assert flowrt(tenant, "deploy", str(flow), "--params", str(params)).exit_code == 0

    (folder / "labels.py").write_text('LABEL = "edited"\n')  # the helper the script imports
    dovecot.append(source.address, "INBOX", mail("first"))
    run_once(tenant)
    assert [m["X-Label"] for m in received(dovecot, target.address, 1)] == ["as deployed"]

    (folder / "tag.py").unlink()  # even gone, the deployed version has its own copy
    dovecot.append(source.address, "INBOX", mail("second"))
    run_once(tenant)
    assert len(received(dovecot, target.address, 2)) == 2

    (folder / "tag.py").write_text(
        "from labels import LABEL\n\n\ndef apply(exchange):\n"
        '    exchange.headers.set("X-Label", LABEL + " again")\n'
    )
    redeployed = flowrt(tenant, "deploy", str(flow), "--params", str(params))
    assert "deployed forward version 2" in redeployed.output, redeployed.output
    dovecot.append(source.address, "INBOX", mail("third"))
    run_once(tenant)
    labels = sorted(str(m["X-Label"]) for m in received(dovecot, target.address, 3))
    assert labels == ["as deployed", "as deployed", "edited again"]


def test_a_changed_parameter_reaches_the_running_runtime_as_a_new_version(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    new_mailbox_user: Callable[..., MailboxUser],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    flow = tmp_path / "forward.flow"
    flow.write_text(FLOW % {"steps": ""})
    for name, value in (
        ("IMAP_PORT", str(stack["imap"])),
        ("SMTPS_PORT", str(stack["smtps"])),
        ("TARGET", target.address),
    ):
        assert flowrt(tenant, "params", "set", "forward", name, value).exit_code == 0
    other = new_mailbox_user(prefix="other")  # made early: Postfix learns of users lazily
    runtimes()
    assert "forward: STARTED (version 1)" in flowrt(tenant, "deploy", str(flow)).output
    dovecot.append(source.address, "INBOX", mail("before"))
    wait_for(lambda: "[dev] before" in subjects(dovecot, target.address), what="first mail")

    changed = flowrt(tenant, "params", "set", "forward", "TARGET", other.address)
    assert changed.exit_code == 0, changed.output
    assert "deployed forward version 2" in changed.output
    assert "forward: STARTED (version 2)" in changed.output
    dovecot.append(source.address, "INBOX", mail("after"))
    wait_for(lambda: "[dev] after" in subjects(dovecot, other.address), what="the new target")
    assert subjects(dovecot, target.address) == ["[dev] before"]
