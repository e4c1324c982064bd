"""Sender-side failures (IMAP, POP3, the mailbox lock) through both paths: a deployed flow
(`flowrt run --once`, then `flowrt status` and `flowrt status --failures`) and
`flowrt test imap|pop3`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path

import pytest

from flowrt.errors import is_retryable
from flowrt.runtime.state import StateDB
from flowrt.tenant import Tenant
from tests.failures.conftest import (
    LineServer,
    Run,
    assert_no_python,
    error_json,
    hint_of,
    json_levels,
    levels_of,
)
from tests.servers import DovecotServer, free_port


def deploy(
    flowrt: Run,
    tmp_path: Path,
    protocol: str,
    port: int,
    protection: str,
    auth: str = 'encrypted credential "box"',
    extra: str = "",
) -> None:
    flow = tmp_path / "poll.flow"
    flow.write_text(
        f"""flow poll-{protocol} {{
    sender mail {{
        protocol      {protocol}
        address       "127.0.0.1:{port}"
        protection    {protection}
        auth          {auth}
        timeout       1s{extra}
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
    assert levels == ["MessagingException", "StoreClosedException", "SocketTimeoutException"]
    assert failure["levels"][0]["message"] == (
        f"Could not connect to {name} host: 127.0.0.1, port: {silent_port};"
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
    assert json_levels(error) == json_levels(failure)  # the same chain, outer level too
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
    assert json_levels(error_json(tested)) == json_levels(failure)


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


# ----------------------------------------------------------------------------- one chain
# The same failure through a deployed flow and through `flowrt test`: the same levels (outer
# type and message included), the same hint, exit code 1 on both.


def same_words(levels: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The levels without what a server adds to each reply on its own (Dovecot's timings,
    "(0.001 + 0.000 secs)"): flowrt's words must be equal, the server's clock need not."""
    return [(kind, re.sub(r" \([\d. +]+ secs\)", "", message)) for kind, message in levels]


def flow_and_test_alike(flowrt: Run, name: str, *test_args: str) -> dict[str, object]:
    """Run the deployed flow once and `flowrt test TEST_ARGS`; assert both failed with the
    same chain and hint, and return the flow's logged failure."""
    once = flowrt("run", "--once", "--log-format", "json")
    assert once.exit_code == 1
    failure = last_failure(flowrt, name)["failure"]
    assert isinstance(failure, dict)
    tested = flowrt("test", *test_args, "--timeout", "1s", "--format", "json")
    assert tested.exit_code == 1
    error = error_json(tested)
    assert same_words(json_levels(error)) == same_words(json_levels(failure))
    assert error["hint"] == failure["hint"]
    assert_no_python(str(failure["chain"]) + tested.output)
    return failure


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_refused_port_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run, tmp_path: Path, protocol: str
) -> None:
    port = free_port()
    deploy(flowrt, tmp_path, protocol, port, "off")
    failure = flow_and_test_alike(
        flowrt, f"poll-{protocol}", protocol, f"127.0.0.1:{port}", "--protection", "off"
    )
    # the reference's words: "MessagingException: Could not connect to SMTP host: h, port: p;"
    assert json_levels(failure) == [
        (
            "MessagingException",
            f"Could not connect to {protocol.upper()} host: 127.0.0.1, port: {port};",
        ),
        ("ConnectException", "Connection refused"),
    ]
    assert failure["kind"] == "connect"
    assert (
        failure["hint"]
        == f"nothing listens on 127.0.0.1:{port}; check the port and that the server runs"
    )


@pytest.mark.parametrize(("protocol", "protection"), [("imap", "imaps"), ("pop3", "pop3s")])
def test_untrusted_server_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run, tmp_path: Path, dovecot: DovecotServer, protocol: str, protection: str
) -> None:
    assert flowrt("keystore", "delete", "test-root").exit_code == 0
    port = dovecot.imaps_port if protocol == "imap" else dovecot.pop3s_port
    deploy(flowrt, tmp_path, protocol, port, protection)
    failure = flow_and_test_alike(
        flowrt, f"poll-{protocol}", protocol, f"127.0.0.1:{port}", "--protection", protection
    )
    levels = json_levels(failure)
    assert levels[0] == (
        "MessagingException",
        f"Could not connect to {protocol.upper()} host: 127.0.0.1, port: {port};",
    )
    assert levels[1][0] == "SSLHandshakeException"
    assert levels[1][1].startswith("PKIX path building failed")
    assert failure["kind"] == "tls"
    fix = f"flowrt test {protocol} 127.0.0.1:{port} --protection {protection} --import"
    assert fix in str(failure["hint"])


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "imaps"), ("pop3", "pop3s")])
def test_password_refused_in_clear_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run, tmp_path: Path, dovecot_no_tls: DovecotServer, protocol: str, tls: str
) -> None:
    # starttls-optional against a server without STARTTLS goes on in clear, where a
    # password is refused (the validator only warns about this flow)
    port = dovecot_no_tls.imap_port if protocol == "imap" else dovecot_no_tls.pop3_port
    deploy(flowrt, tmp_path, protocol, port, "starttls-optional", 'plain credential "box"')
    failure = flow_and_test_alike(
        flowrt, f"poll-{protocol}", protocol, f"127.0.0.1:{port}",
        "--protection", "starttls-optional", "--auth", "plain", "--credential", "box",
    )  # fmt: skip
    assert json_levels(failure) == [
        (
            "MessagingException",
            "refusing to send the password of credential 'box' in clear: the connection to "
            f"127.0.0.1:{port} is not encrypted (protection starttls-optional)",
        )
    ]
    hint = str(failure["hint"])
    assert f"use protection starttls-mandatory or {tls}, or auth encrypted" in hint
    assert "allow-plaintext-auth only where the link is protected otherwise" in hint


@pytest.mark.parametrize(
    ("protocol", "command", "tls", "tls_port"),
    [("imap", "STARTTLS", "imaps", 993), ("pop3", "STARTTLS (STLS)", "pop3s", 995)],
)
def test_starttls_missing_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run,
    tmp_path: Path,
    dovecot_no_tls: DovecotServer,
    protocol: str,
    command: str,
    tls: str,
    tls_port: int,
) -> None:
    port = dovecot_no_tls.imap_port if protocol == "imap" else dovecot_no_tls.pop3_port
    deploy(flowrt, tmp_path, protocol, port, "starttls-mandatory")
    failure = flow_and_test_alike(
        flowrt, f"poll-{protocol}", protocol, f"127.0.0.1:{port}",
        "--protection", "starttls-mandatory", "--auth", "encrypted", "--credential", "box",
    )  # fmt: skip
    assert json_levels(failure) == [
        (
            "MessagingException",
            f"the {protocol.upper()} server 127.0.0.1:{port} does not offer {command}; "
            "protection starttls-mandatory does not fall back, since falling back would send "
            "the login and the mails in clear",
        )
    ]
    # the implicit-TLS port, not only the word: the implicit protection on this port fails
    assert f'address "127.0.0.1:{tls_port}", protection {tls}' in str(failure["hint"])


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "imaps"), ("pop3", "pop3s")])
def test_refused_login_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run, tmp_path: Path, dovecot: DovecotServer, protocol: str, tls: str
) -> None:
    port = dovecot.imaps_port if protocol == "imap" else dovecot.pop3s_port
    deploy(flowrt, tmp_path, protocol, port, tls, 'plain credential "box"')
    failure = flow_and_test_alike(
        flowrt, f"poll-{protocol}", protocol, f"127.0.0.1:{port}",
        "--protection", tls, "--credential", "box",
    )  # fmt: skip
    assert [t for t, _ in json_levels(failure)] == ["AuthenticationFailedException"]
    assert failure["kind"] == "login"
    hint = str(failure["hint"])
    assert "credential 'box' (user u@example.com)" in hint
    assert "`flowrt credentials add box --user USER --password-stdin --replace`" in hint


def test_missing_folder_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run, tmp_path: Path, dovecot: DovecotServer
) -> None:
    user = dovecot.new_user()
    added = flowrt(
        "credentials", "add", "box", "--user", user.address, "--password-stdin", "--replace",
        input=user.password,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    port = dovecot.imaps_port
    deploy(flowrt, tmp_path, "imap", port, "imaps", 'plain credential "box"',
           '\n        folder        "Invoices"')  # fmt: skip
    failure = flow_and_test_alike(
        flowrt, "poll-imap", "imap", f"127.0.0.1:{port}",
        "--protection", "imaps", "--credential", "box", "--check-mailbox", "Invoices",
    )  # fmt: skip
    ((kind, message),) = json_levels(failure)
    assert kind == "FolderNotFoundException"
    assert message.startswith(f"folder 'Invoices' not found in the mailbox of {user.address}")
    assert failure["kind"] == "folder"
    hint = str(failure["hint"])
    assert hint.startswith("the mailbox has no folder 'Invoices'; its folders: INBOX")
    assert f"`flowrt test imap 127.0.0.1:{port} --protection imaps --credential box " in hint


GREETINGS = {
    ("imap", "refused"): b"* BYE too many connections from your address\r\n",
    ("pop3", "refused"): b"-ERR [SYS/TEMP] too many connections from your address\r\n",
    ("imap", "not mail"): b"SSH-2.0-OpenSSH_9.6\r\n",
    ("pop3", "not mail"): b"SSH-2.0-OpenSSH_9.6\r\n",
}


def greet_and_close(
    flowrt: Run, tmp_path: Path, protocol: str, greeting: bytes
) -> tuple[dict[str, object], int]:
    """A flow, and `flowrt test`, against a server that sends ``greeting``, reads the
    client's first line and closes: the failure both report alike, and the server's port."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(reader.readline(), 2)
        writer.close()

    server = LineServer(talk).start()
    try:
        deploy(flowrt, tmp_path, protocol, server.port, "off")
        failure = flow_and_test_alike(
            flowrt, f"poll-{protocol}", protocol, f"127.0.0.1:{server.port}",
            "--protection", "off", "--auth", "encrypted", "--credential", "box",
        )  # fmt: skip
    finally:
        server.stop()
    return failure, server.port


@pytest.mark.parametrize(("protocol", "case"), list(GREETINGS))
def test_a_greeting_that_refuses_or_is_not_mail_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run, tmp_path: Path, protocol: str, case: str
) -> None:
    failure, port = greet_and_close(flowrt, tmp_path, protocol, GREETINGS[protocol, case])
    greeting = GREETINGS[protocol, case].decode().strip()
    name = protocol.upper()
    (level,) = json_levels(failure)  # the greeting says it all: no level below
    connect = f"Could not connect to {name} host: 127.0.0.1, port: {port};"
    hint = str(failure["hint"])
    if case == "refused":
        assert level == (
            "MessagingException",
            f"{connect} the server refused the session: {greeting}",
        )
        assert "takes no session now" in hint
    else:  # a wrong port: say what answered, and which ports the protocol uses
        article = "an" if protocol == "imap" else "a"
        assert level == (
            "MessagingException",
            f"{connect} not {article} {name} greeting: {greeting}",
        )
        assert hint.startswith(f"is 127.0.0.1:{port} {article} {name} port? ({name} ")


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_server_that_closes_after_its_greeting_reads_the_same_in_a_flow_and_in_flowrt_test(
    flowrt: Run, tmp_path: Path, protocol: str
) -> None:
    greeting = b"* OK ready\r\n" if protocol == "imap" else b"+OK ready\r\n"

    # It closes at the client's first command, which it reads first: the client sees an
    # orderly close there. (Closing before the client said anything races with the client's
    # first command; that case is worded by greeting_not_ok, tested below.)
    failure, port = greet_and_close(flowrt, tmp_path, protocol, greeting)
    levels = json_levels(failure)
    assert levels[0] == (
        "MessagingException",
        f"Could not connect to {protocol.upper()} host: 127.0.0.1, port: {port};",
    )
    assert levels[1][0] == "StoreClosedException"  # it greeted: not "not an IMAP greeting"
    assert failure["kind"] == "connect"


@pytest.mark.parametrize(("protocol", "greeting"), [("imap", "* OK ready"), ("pop3", "+OK ready")])
def test_a_greeting_then_a_closed_connection_is_not_called_a_wrong_port(
    protocol: str, greeting: str
) -> None:
    from flowrt.adapters.mail.sender.errors import greeting_not_ok

    error = greeting_not_ok(protocol, "127.0.0.1", 1143, greeting)
    name = protocol.upper()
    assert levels_of(error) == [
        ("MessagingException", f"Could not connect to {name} host: 127.0.0.1, port: 1143;"),
        (
            "StoreClosedException",
            f"{name} host 127.0.0.1:1143 closed the connection right after its greeting",
        ),
    ]
    assert hint_of(error).startswith(f"127.0.0.1:1143 greeted ({greeting}) and then closed")
    assert is_retryable(error)
