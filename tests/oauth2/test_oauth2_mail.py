"""OAuth2 logins against real servers: Dovecot's oauth2 passdb asks the local authorization
server about every bearer token (IMAP, POP3, and SMTP AUTH through Postfix's Dovecot SASL).
Each test runs twice: servers offering only XOAUTH2, then only OAUTHBEARER."""

from __future__ import annotations

import email
import email.policy
import json
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import structlog

from flowrt.adapters.mail.imap.session import open_imap
from flowrt.adapters.mail.oauth2 import OAuth2Tokens
from flowrt.adapters.mail.pop3.session import open_pop3
from flowrt.adapters.mail.sender.endpoint import endpoint_from_tenant
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.dsl import parse_text
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import AuthenticationFailedException, find_hint, render_chain
from tests.oauth2.conftest import (
    BearerStack,
    add_refresh_credential,
    files_containing,
    flowrt,
    security,
    stored_refresh_token,
)
from tests.runtime.test_runtime_e2e import Runtime

pytestmark = pytest.mark.servers


def flow_text(stack: BearerStack, source: str, target: str, *, protocol: str = "imap") -> str:
    d, p = stack.dovecot, stack.postfix
    port = d.imap_port if protocol == "imap" else d.pop3_port
    return f"""flow bearer {{
    sender mail {{
        protocol      {protocol}
        address       "127.0.0.1:{port}"
        protection    starttls-mandatory
        auth          oauth2 credential "m365" user "{source}"
        {"post-process  mark-read" if protocol == "imap" else "post-process  delete"}
        poll          every 1s
        timeout       10s
    }}
    pipeline {{
        set header "X-Flow" = "bearer"
    }}
    receiver mail out {{
        address       "127.0.0.1:{p.smtps_port}"
        protection    smtps
        auth          oauth2 credential "m365" user "{source}"
        from          "{source}"
        to            "{target}"
        subject       "Fwd: ${{header.Subject}}"
        timeout       10s
    }}
}}
"""


def mail(subject: str) -> bytes:
    message = EmailMessage()
    message["From"] = "billing@supplier.example"
    message["To"] = "plant@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<{time.monotonic_ns()}@supplier.example>"
    message.set_content("Amount: 100 EUR")
    return message.as_bytes(policy=email.policy.SMTP)


def subjects(stack: BearerStack, user: str) -> list[str]:
    return [
        str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])
        for _uid, _flags, raw in stack.dovecot.messages(user, "INBOX")
    ]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def logins(stack: BearerStack, user: str) -> list[str]:
    """The bearer methods of Dovecot's IMAP/POP3 logins of ``user`` (the test's own
    helpers log in with passwords; those are left out)."""
    lines = [line for line in stack.dovecot.log().splitlines() if f"user=<{user}>, method=" in line]
    methods = [line.split("method=")[1].split(",")[0] for line in lines if "Login:" in line]
    return [m for m in methods if m in ("XOAUTH2", "OAUTHBEARER")]


@pytest.fixture
def runtime(tenant: Path) -> Iterator[Callable[[], Runtime]]:
    started: list[Runtime] = []

    def start() -> Runtime:
        started.append(Runtime(tenant))
        return started[-1]

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.stop()


def test_deployed_flow_logs_in_with_bearer_tokens_and_survives_token_expiry(
    bearer_stack: BearerStack, tenant: Path, runtime: Callable[[], Runtime], tmp_path: Path
) -> None:
    stack, auth = bearer_stack, bearer_stack.auth
    source, target = stack.dovecot.new_user("src"), stack.dovecot.new_user("dst")
    first_refresh = add_refresh_credential(tenant, auth, "m365", source.address)
    flow = tmp_path / "bearer.flow"
    flow.write_text(flow_text(stack, source.address, target.address))
    process = runtime()
    deployed = flowrt(tenant, "deploy", str(flow))
    assert deployed.exit_code == 0, deployed.output

    stack.dovecot.append(source.address, "INBOX", mail("before expiry"))
    wait_for(lambda: "Fwd: before expiry" in subjects(stack, target.address), "the first mail")
    # The provider rotated the refresh token: the new one is stored, the old one is gone.
    rotated = stored_refresh_token(tenant, "m365")
    assert rotated != first_refresh and rotated in auth.refresh_tokens()

    auth.expire_access_tokens()  # the hour is over (for the server; the cache still has it)
    # the poll's connection is kept between polls, logged in: the server ends the session
    # when the token expires (as Microsoft 365 does), so the next poll logs in again
    stack.dovecot.kick(source.address)
    refreshes = auth.grants.count("refresh_token")
    stack.dovecot.append(source.address, "INBOX", mail("after expiry"))
    wait_for(lambda: "Fwd: after expiry" in subjects(stack, target.address), "the second mail")
    assert auth.grants.count("refresh_token") > refreshes  # refreshed, not failed
    assert stored_refresh_token(tenant, "m365") in auth.refresh_tokens()

    def statuses() -> list[str]:
        listing = flowrt(tenant, "mpl", "list", "--flow", "bearer", "--format", "json")
        return sorted(row["status"] for row in json.loads(listing.output))

    # the mail is sent before the source is marked read: wait for the final entries
    wait_for(lambda: statuses() == ["COMPLETED", "COMPLETED"], "the final MPL entries")
    assert statuses() == ["COMPLETED", "COMPLETED"]
    assert logins(stack, source.address) and set(logins(stack, source.address)) == {stack.mechanism}
    process.stop()

    # Nothing that was issued leaks: tenant files (the store is encrypted), runtime log,
    # MPL, CLI output.
    secrets = list(auth.issued)
    assert files_containing(tenant, secrets) == []
    log = process.log.read_text()
    assert "oauth2.refresh_token_rotated" in log
    assert not [s for s in secrets if s in log]
    shown = flowrt(tenant, "mpl", "list", "--format", "json").output
    shown += flowrt(tenant, "credentials", "show", "m365").output
    assert not [s for s in secrets if s in shown]


def test_pop3_sender_logs_in_with_a_bearer_token(bearer_stack: BearerStack, tenant: Path) -> None:
    stack = bearer_stack
    user = stack.dovecot.new_user("pop")
    add_refresh_credential(tenant, stack.auth, "m365", user.address)
    text = flow_text(stack, user.address, user.address, protocol="pop3")
    sender = parse_text(text, "bearer.flow").flows[0].sender
    assert sender is not None
    endpoint = endpoint_from_tenant(
        sender, security(tenant), tokens=OAuth2Tokens(), oauth2_user=user.address
    )

    async def login() -> None:
        client = await open_pop3(endpoint)
        await client.quit()

    import asyncio

    asyncio.run(login())
    assert logins(stack, user.address) == [stack.mechanism]


async def test_revoked_refresh_token_fails_with_the_login_command_as_hint(
    bearer_stack: BearerStack, tenant: Path
) -> None:
    stack = bearer_stack
    user = stack.dovecot.new_user("rev")
    refresh = add_refresh_credential(tenant, stack.auth, "m365", user.address)
    stack.auth.revoke_refresh_tokens()
    receiver = parse_text(flow_text(stack, user.address, user.address), "f.flow").flows[0]
    smtp = SmtpReceiver(receiver.receivers[0], security(tenant))
    exchange = Exchange(body=b"x\n", headers=Headers([("Subject", "revoked")]))
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(AuthenticationFailedException) as info,
    ):
        async with smtp:
            await smtp.deliver(exchange)
    assert render_chain(info.value) == (
        f"AuthenticationFailedException: OAuth2 token request to {stack.auth.token_url} "
        "failed: HTTP 400 invalid_grant: token expired or revoked"
    )
    hint = find_hint(info.value) or ""
    assert "the refresh token of credential m365 has expired or was revoked" in hint
    assert (
        f"flowrt credentials oauth2-login m365 --provider custom --client-id flowrt-app "
        f"--authorize-url {stack.auth.authorize_url} --token-url {stack.auth.token_url}"
    ) in hint
    assert f"--user {user.address} --replace" in hint
    assert stored_refresh_token(tenant, "m365") == refresh  # unchanged
    assert refresh not in repr(logs) + render_chain(info.value) + hint

    # The IMAP sender says the same.
    sender = parse_text(flow_text(stack, user.address, user.address), "f.flow").flows[0].sender
    assert sender is not None
    endpoint = endpoint_from_tenant(sender, security(tenant), oauth2_user=user.address)
    with pytest.raises(AuthenticationFailedException) as info:
        await open_imap(endpoint)
    assert "flowrt credentials oauth2-login m365" in (find_hint(info.value) or "")


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_connectivity_test_with_auth_oauth2(
    bearer_stack: BearerStack, tenant: Path, protocol: str
) -> None:
    stack = bearer_stack
    user = stack.dovecot.new_user("chk")
    refresh = add_refresh_credential(tenant, stack.auth, "m365", user.address)
    port = {
        "imap": stack.dovecot.imap_port,
        "pop3": stack.dovecot.pop3_port,
        "smtp": stack.postfix.submission_port,
    }[protocol]
    args = ["test", protocol, f"127.0.0.1:{port}", "--auth", "oauth2", "--credential", "m365"]
    result = flowrt(tenant, *args)
    assert result.exit_code == 0, result.output
    assert f"{stack.mechanism} as {user.address}" in result.output
    assert not [s for s in stack.auth.issued if s in result.output]
    assert refresh not in result.output

    stack.auth.revoke_refresh_tokens()
    failed = flowrt(tenant, *args)
    assert failed.exit_code == 1
    assert "invalid_grant" in failed.output
    assert "flowrt credentials oauth2-login m365 --provider custom" in failed.output


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_connectivity_test_refuses_a_token_in_clear_as_the_flow_does(
    bearer_stack: BearerStack, tenant: Path, protocol: str
) -> None:
    stack = bearer_stack
    user = stack.dovecot.new_user("clear")
    add_refresh_credential(tenant, stack.auth, "m365", user.address)
    port = {
        "imap": stack.dovecot.imap_port,
        "pop3": stack.dovecot.pop3_port,
        "smtp": stack.postfix.smtp_port,
    }[protocol]
    issued = list(stack.auth.issued)
    result = flowrt(
        tenant, "test", protocol, f"127.0.0.1:{port}", "--protection", "off",
        "--auth", "oauth2", "--credential", "m365",
    )  # fmt: skip
    assert result.exit_code == 1
    assert (
        "refusing to send the OAuth2 token of credential 'm365' in clear: the connection to "
        f"127.0.0.1:{port} is not encrypted (protection off)"
    ) in result.output
    assert stack.auth.issued == issued  # refused before a token was asked for
