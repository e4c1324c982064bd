"""Sender-side failures (IMAP, POP3, the mailbox lock) through both paths: a deployed flow
(`flowrt run --once`, then `flowrt status` and `flowrt status --failures`) and
`flowrt test imap|pop3`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from flowrt.runtime.state import StateDB
from flowrt.tenant import Tenant
from tests.failures.conftest import Run, assert_no_python, error_json, json_levels
from tests.servers import DovecotServer


def deploy(flowrt: Run, tmp_path: Path, protocol: str, port: int, protection: str) -> None:
    flow = tmp_path / "poll.flow"
    flow.write_text(
        f"""flow poll-{protocol} {{
    sender mail {{
        protocol      {protocol}
        address       "127.0.0.1:{port}"
        protection    {protection}
        auth          encrypted credential "box"
        timeout       1s
    }}
    receiver mail out {{
        address       "127.0.0.1:25"
        protection    off
        from          "a@example.com"
        to            "b@example.com"
    }}
}}
""",
        encoding="utf-8",
    )
    result = flowrt("deploy", str(flow))
    assert result.exit_code == 0, result.output


def last_failure(flowrt: Run, name: str) -> dict[str, object]:
    """The flow's row of `flowrt status --format json`, and its newest logged failure."""
    status = json.loads(flowrt("status", "--format", "json").output)
    (row,) = [r for r in status["flows"] if r["flow"] == name]
    listed = flowrt("status", "--failures", "--format", "json")
    assert listed.exit_code == 0, listed.output
    failures = json.loads(listed.output)["failures"]
    assert failures and failures[0]["flow"] == name
    return {"row": row, "failure": failures[0]}


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_read_timeout(flowrt: Run, tmp_path: Path, silent_port: int, protocol: str) -> None:
    deploy(flowrt, tmp_path, protocol, silent_port, "off")
    once = flowrt("run", "--once", "--log-format", "json")
    assert once.exit_code == 1
    seen = last_failure(flowrt, f"poll-{protocol}")
    failure, row = seen["failure"], seen["row"]
    assert isinstance(failure, dict) and isinstance(row, dict)
    name = protocol.upper()
    levels = [level["type"] for level in failure["levels"]]
    assert levels == ["MailConnectException", "StoreClosedException", "SocketTimeoutException"]
    assert failure["levels"][0]["message"] == (
        f"Could not connect to {name} host: 127.0.0.1, port: {silent_port}"
    )
    assert failure["kind"] == "connect"
    hint = str(failure["hint"])
    assert f"sent no {name} greeting within 1s" in hint
    assert "the next poll reconnects" not in hint
    assert row["hint"] == hint and row["chain"] == failure["chain"]

    text = flowrt("status")
    assert f"poll-{protocol}: last error" in text.output
    assert f"hint: {hint}" in text.output
    assert_no_python(text.output)

    tested = flowrt(
        "test", protocol, f"127.0.0.1:{silent_port}", "--protection", "off", "--timeout", "1s",
        "--format", "json",
    )  # fmt: skip
    assert tested.exit_code == 1
    error = error_json(tested)
    assert [t for t, _ in json_levels(error)][1:] == levels[1:]
    assert error["hint"] == hint


@pytest.mark.parametrize(
    ("protocol", "tls", "plain"), [("imap", "imaps", 143), ("pop3", "pop3s", 110)]
)
def test_plain_client_on_the_implicit_tls_port(
    flowrt: Run, tmp_path: Path, dovecot: DovecotServer, protocol: str, tls: str, plain: int
) -> None:
    port = dovecot.imaps_port if protocol == "imap" else dovecot.pop3s_port
    deploy(flowrt, tmp_path, protocol, port, "starttls-mandatory")
    assert flowrt("run", "--once", "--log-format", "json").exit_code == 1
    failure = last_failure(flowrt, f"poll-{protocol}")["failure"]
    assert isinstance(failure, dict)
    hint = str(failure["hint"])
    assert f"127.0.0.1:{port} speaks TLS at once" in hint
    assert f"use protection {tls} for port {port}" in hint
    assert f"or port {plain} with protection starttls-mandatory" in hint

    tested = flowrt(
        "test", protocol, f"127.0.0.1:{port}", "--protection", "off", "--timeout", "1s",
        "--format", "json",
    )  # fmt: skip
    assert tested.exit_code == 1
    assert error_json(tested)["hint"] == hint


def test_mailbox_lock_held_by_another_node(
    flowrt: Run, tenant: Path, tmp_path: Path, silent_port: int
) -> None:
    deploy(flowrt, tmp_path, "imap", silent_port, "off")
    key = "u@example.com@127.0.0.1/INBOX"
    with StateDB.open(Tenant(tenant)) as state:
        taken, _ = state.acquire_lock(key, "node-2:4242:abc", 600, info="poll-imap:imap")
    assert taken

    once = flowrt("run", "--once", "--log-format", "json")
    assert once.exit_code == 1  # the flow could not poll

    seen = last_failure(flowrt, "poll-imap")
    failure, row = seen["failure"], seen["row"]
    assert isinstance(failure, dict) and isinstance(row, dict)
    assert failure["kind"] == "lock"
    assert [level["type"] for level in failure["levels"]] == ["MailboxLockedException"]
    assert f"mailbox {key} is being polled by node-2:4242:abc" in str(failure["chain"])
    hint = str(failure["hint"])
    assert "node-2:4242:abc" in hint
    assert f"`flowrt locks release {key}`" in hint
    assert "MailboxLockedException: mailbox" in str(row["last_error"])

    text = flowrt("status")
    assert "MailboxLockedException: mailbox" in text.output
    assert f"flowrt locks release {key}" in text.output

    released = flowrt("locks", "release", key)
    assert released.exit_code == 0, released.output
    listed = flowrt("status", "--failures")
    assert listed.exit_code == 0
    assert "poll-imap  lock" in listed.output


def test_failures_listing_is_bounded_and_named(flowrt: Run, tenant: Path) -> None:
    none = flowrt("status", "--failures")
    assert none.exit_code == 0 and "no failed polls recorded" in none.output
    unknown = flowrt("status", "no-such-flow", "--failures")
    assert unknown.exit_code == 1  # a name the tenant does not have, as `flowrt status NAME`
    assert "no deployed flow named 'no-such-flow'" in unknown.output
    with StateDB.open(Tenant(tenant)) as state:
        from flowrt.errors import MailConnectException
        from flowrt.poll_failures import from_exception

        for i in range(3):
            state.record_poll_failure(
                from_exception("x:imap", "x", time.time() + i, MailConnectException(f"no {i}"))
            )
        assert [f.summary for f in state.poll_failures("x", limit=2)] == [
            "MailConnectException: no 2",
            "MailConnectException: no 1",
        ]
