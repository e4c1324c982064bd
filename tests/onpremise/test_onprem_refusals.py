"""What a user sees when the connector refuses: an unmapped host (0x02), a stopped back end
(0x05), a wrong token (RFC 1929 failure) and a location ID the connector does not serve
(0x03); each once on the receiver side (a FAILED message in the MPL) and once on the sender
side (the poll fails: the runtime's log line and ``flowrt status``).

One connector serves the whole module; each test has its own tenant and mailboxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.onpremise.conftest import LOCATION, VHOST, Connector, OnPrem, tcp
from tests.servers import DovecotServer, PostfixServer, ScriptedSMTPServer

pytestmark = pytest.mark.servers

STOPPED_IMAP = f"{VHOST}:1143"
STOPPED_SMTP = f"{VHOST}:2525"


@pytest.fixture(scope="module")
def connector(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, postfix: PostfixServer
) -> Iterator[Connector]:
    stopped = ScriptedSMTPServer().start()  # a mail server that was there, and is stopped
    stopped.stop()
    connector = Connector(
        tmp_path_factory.mktemp("connector"),
        [
            tcp(f"{VHOST}:143", dovecot.imap_port),
            tcp(f"{VHOST}:587", postfix.submission_port),
            tcp(STOPPED_IMAP, stopped.port),
            tcp(STOPPED_SMTP, stopped.port),
        ],
    )
    yield connector
    connector.stop()


@dataclasses.dataclass(frozen=True)
class Case:
    imap: str  # the sender's address through the connector
    smtp: str  # the receiver's address through the connector
    text: str  # the SocksException's message
    outcome: str  # the connector's log outcome
    location: str = LOCATION
    wrong_token: bool = False


CASES = {
    "unmapped host": Case(
        "imap.plant.example:143",
        "smtp.plant.example:587",
        "Connection not allowed by ruleset",
        "not_allowed",
    ),
    "stopped back end": Case(STOPPED_IMAP, STOPPED_SMTP, "Connection refused", "refused"),
    "wrong token": Case(
        f"{VHOST}:143",
        f"{VHOST}:587",
        "SOCKS authentication failed",
        "bad_token",
        wrong_token=True,
    ),
    "unknown location": Case(
        f"{VHOST}:143", f"{VHOST}:587", "Network unreachable", "unknown_location", "plant-2"
    ),
}


def expected_hint(name: str, target: str, connector: Connector) -> str:
    return {
        "unmapped host": f"add a mapping for {target} in location plant-1",
        "stopped back end": (
            f"the internal server behind {target} refused the connection; is the mail "
            "server running on the mapped host and port?"
        ),
        "wrong token": (
            "the connector for location plant-1 refused the access token: the password of "
            "credential 'plant-1-token' must be the connector's token (`flowrt credentials "
            "add plant-1-token --user plant-1 --password-stdin --replace`)"
        ),
        "unknown location": (
            f"the connector at 127.0.0.1:{connector.port} does not serve location ID "
            "'plant-2'; the location ID in the flow and in `flowrt locations list` must be "
            "the connector's location_id"
        ),
    }[name]


def setup_location(onprem: OnPrem, case: Case, connector: Connector) -> None:
    token = "not-" + connector.token if case.wrong_token else connector.token
    onprem.add_location(token, connector.port, location=case.location)


def through(address: str, case: Case, protection: str, auth: str, credential: str) -> str:
    return f"""
        address "{address}"
        proxy on-premise location "{case.location}"
        protection {protection}
        auth {auth} credential "{credential}"
    """


def direct(port: int, credential: str) -> str:
    return f"""
        address "127.0.0.1:{port}"
        protection starttls-mandatory
        auth plain credential "{credential}"
    """


@pytest.mark.parametrize("name", list(CASES))
def test_receiver_refused_by_the_connector_fails_the_message_with_chain_and_hint(
    name: str, onprem: OnPrem, connector: Connector, dovecot: DovecotServer
) -> None:
    case = CASES[name]
    setup_location(onprem, case, connector)
    flow = onprem.write_flow(
        "invoice-forward",
        sender=direct(dovecot.imap_port, "plant-mailbox"),
        receiver=through(case.smtp, case, "starttls-mandatory", "plain", "smtp-out"),
        on_error="retry 1 every 100ms",
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0815")
    since = len(connector.events)

    run = onprem.run_once()

    assert run.code == 1, run.log
    host, port = case.smtp.rsplit(":", 1)
    chain = (
        f"MailConnectException: Couldn't connect to host, port: {host}, {port}; timeout 10000\n"
        "  nested exception is:\n"
        f"\tSocksException: {case.text}"
    )
    hint = expected_hint(name, case.smtp, connector)
    _, shown = onprem.failed_entry()
    assert "Status          FAILED" in shown
    assert f"Receivers       mail smtp accounting {case.smtp}" in shown
    assert "Error (last failed step: receiver accounting (line " in shown
    assert f"{chain}\nhint: {hint}\n" in shown
    retried = case.text in ("Connection refused",)  # only a back end that is down may come back
    assert ("Run 2: FAILED" in shown) is retried
    status = onprem.status()
    assert (status["failed"], status["completed"]) == (1, 0)
    assert status["last_error"] == (
        f"MailConnectException: Couldn't connect to host, port: {host}, {port}; timeout 10000; "
        f"caused by SocksException: {case.text}"
    )
    # the mail stays in the plant mailbox, unread, for the next poll; nothing was sent
    assert onprem.source_seen() == [False]
    assert onprem.arrived() == []
    assert connector.wait_for_outcome(case.outcome, since)["location"] == case.location
    assert connector.token not in run.log + shown


@pytest.mark.parametrize("name", list(CASES))
def test_sender_refused_by_the_connector_fails_the_poll_with_chain_and_hint(
    name: str, onprem: OnPrem, connector: Connector, postfix: PostfixServer
) -> None:
    case = CASES[name]
    setup_location(onprem, case, connector)
    flow = onprem.write_flow(
        "invoice-forward",
        sender=through(case.imap, case, "starttls-mandatory", "plain", "plant-mailbox"),
        receiver=direct(postfix.submission_port, "smtp-out"),
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0815")
    since = len(connector.events)

    run = onprem.run_once()

    assert run.code == 1, run.log
    host, port = case.imap.rsplit(":", 1)
    (failed,) = run.events("poll failed")[:1]
    assert failed["level"] == "error"
    assert failed["error"] == (
        f"MessagingException: Could not connect to IMAP host: {host}, port: {port};\n"
        "  nested exception is:\n"
        f"\tSocksException: {case.text}"
    )
    assert failed["hint"] == expected_hint(name, case.imap, connector)
    status = onprem.status()
    assert status["last_error"].startswith("1 poll(s) failed in a row: MessagingException: ")
    assert f"Could not connect to IMAP host: {host}, port: {port}" in status["last_error"]
    assert onprem.ok("mpl", "list", "--format", "json").strip() == "[]"  # no mail was read
    assert onprem.source_seen() == [False]
    assert connector.wait_for_outcome(case.outcome, since)["location"] == case.location


def test_location_credential_whose_user_is_not_the_location_id(
    onprem: OnPrem, connector: Connector, dovecot: DovecotServer
) -> None:
    """The right token, but the credential's user is not the location ID: the connector
    answers 0x03, and the hint says which user is wrong (not that the location is)."""
    onprem.add_location(connector.token, connector.port, user="plant-2")
    case = CASES["wrong token"]
    flow = onprem.write_flow(
        "invoice-forward",
        sender=direct(dovecot.imap_port, "plant-mailbox"),
        receiver=through(
            f"{VHOST}:587",
            dataclasses.replace(case, wrong_token=False),
            "starttls-mandatory",
            "plain",
            "smtp-out",
        ),
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0816")

    run = onprem.run_once()

    assert run.code == 1, run.log
    _, shown = onprem.failed_entry("ESCALATED")  # no on-error block: escalated at once
    assert "\tSocksException: Network unreachable\n" in shown
    assert (
        f"hint: the connector at 127.0.0.1:{connector.port} does not serve location ID "
        "'plant-2', the user of credential 'plant-1-token'; the user must be the location ID "
        "'plant-1'\n"
    ) in shown


def test_status_of_a_failing_poll_names_the_cause(
    onprem: OnPrem, connector: Connector, postfix: PostfixServer
) -> None:
    case = CASES["unmapped host"]
    setup_location(onprem, case, connector)
    flow = onprem.write_flow(
        "invoice-forward",
        sender=through(case.imap, case, "starttls-mandatory", "plain", "plant-mailbox"),
        receiver=direct(postfix.submission_port, "smtp-out"),
    )
    onprem.ok("deploy", str(flow))

    assert onprem.run_once().code == 1

    assert "Connection not allowed by ruleset" in onprem.status()["last_error"]


def test_location_without_a_credential_says_the_connector_needs_one(
    onprem: OnPrem, connector: Connector, dovecot: DovecotServer
) -> None:
    onprem.ok("locations", "add", LOCATION, "--proxy", f"127.0.0.1:{connector.port}")
    case = CASES["wrong token"]
    flow = onprem.write_flow(
        "invoice-forward",
        sender=direct(dovecot.imap_port, "plant-mailbox"),
        receiver=through(f"{VHOST}:587", case, "starttls-mandatory", "plain", "smtp-out"),
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0817")
    since = len(connector.events)

    assert onprem.run_once().code == 1

    _, shown = onprem.failed_entry("ESCALATED")
    assert (
        "\tSocksException: SOCKS authentication failed\n"
        "hint: location plant-1 has no access token; give it a credential whose user is "
        "plant-1 and whose password is the connector's token (`flowrt locations add plant-1 "
        f"--proxy 127.0.0.1:{connector.port} --credential NAME --replace`)\n"
    ) in shown
    assert connector.wait_for_outcome("no_acceptable_method", since)
