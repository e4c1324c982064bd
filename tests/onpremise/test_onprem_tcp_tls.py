"""``tcp-tls`` mappings: the connector does the TLS handshake with the mail server (checked
against its own truststore and the mapping's tls_name), and the flow says ``protection off``:
the runtime's keystore plays no part. A back end the connector does not trust is refused
with reply 0x01, and the user is sent to ``flowrt connector check``, which names the reason.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.onpremise.conftest import (
    LOCATION,
    TOKEN_ENV,
    VHOST,
    OnPrem,
    StartConnector,
    tcp_tls,
    wait_for,
)
from tests.servers import DovecotServer, PostfixServer, TestCA

pytestmark = pytest.mark.servers

# auth encrypted (CRAM-MD5): the leg from the runtime to the connector is not encrypted here
SENDER = f"""
    address "{VHOST}:993"
    proxy on-premise location "{LOCATION}"
    protection off
    auth encrypted credential "plant-mailbox"
"""
RECEIVER = f"""
    address "{VHOST}:465"
    proxy on-premise location "{LOCATION}"
    protection off
    auth encrypted credential "smtp-out"
"""


def untrusted_hint(target: str) -> str:
    return (
        f"the connector for location plant-1 could not complete the connection to {target}; "
        "`flowrt connector check` on the connector host shows why (a tcp-tls back end whose "
        "certificate its truststore does not trust, a TLS handshake failure, or "
        "max_connections reached)"
    )


def test_deployed_flow_works_through_tcp_tls_mappings_with_protection_off(
    onprem: OnPrem,
    start_connector: StartConnector,
    test_ca: TestCA,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    connector = start_connector(
        [tcp_tls(f"{VHOST}:993", dovecot.imaps_port), tcp_tls(f"{VHOST}:465", postfix.smtps_port)],
        truststore=test_ca.cert_pem,
    )
    onprem.add_location(connector.token, connector.port)
    onprem.ok("keystore", "delete", "test-root")  # trust lives in the connector only
    onprem.drop_mail("Invoice 2026-0815")
    runtime = onprem.start_runtime()
    flow = onprem.write_flow("invoice-forward", sender=SENDER, receiver=RECEIVER)

    deployed = onprem.cli("deploy", str(flow))

    assert deployed.exit_code == 0, deployed.output
    assert "invoice-forward: STARTED (version 1)" in deployed.output
    arrived = onprem.dovecot.wait_for_message(onprem.target.address, timeout=20)
    assert b"Subject: Fwd: Invoice 2026-0815" in arrived[2]
    wait_for(lambda: onprem.source_seen() == [True], "the mail to be marked read")
    wait_for(lambda: onprem.status()["completed"] == 1, "the status to count the mail")
    status = onprem.status()
    assert (status["state"], status["failed"], status["last_error"]) == ("STARTED", 0, "")
    assert runtime.stop() == 0
    relayed = {e["virtual"]: e["mapping"] for e in connector.events if e["event"] == "connected"}
    assert relayed == {
        f"{VHOST}:993": f"{VHOST}:993 -> 127.0.0.1:{dovecot.imaps_port} (tcp-tls)",
        f"{VHOST}:465": f"{VHOST}:465 -> 127.0.0.1:{postfix.smtps_port} (tcp-tls)",
    }


def test_back_end_the_connector_does_not_trust_fails_the_message_with_chain_and_hint(
    onprem: OnPrem,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    other = TestCA("Other Root CA")
    connector = start_connector(
        [tcp_tls(f"{VHOST}:465", postfix.smtps_port)], truststore=other.cert_pem
    )
    onprem.add_location(connector.token, connector.port)
    flow = onprem.write_flow(
        "invoice-forward",
        sender=f"""
            address "127.0.0.1:{dovecot.imap_port}"
            protection starttls-mandatory
            auth plain credential "plant-mailbox"
        """,
        receiver=RECEIVER,
        on_error="retry 1 every 100ms",
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0815")

    run = onprem.run_once()

    assert run.code == 1, run.log
    _, shown = onprem.failed_entry()
    assert (
        f"MailConnectException: Couldn't connect to host, port: {VHOST}, 465; timeout 10000\n"
        "  nested exception is:\n"
        "\tSocksException: General SOCKS server failure\n"
        f"hint: {untrusted_hint(f'{VHOST}:465')}\n"
    ) in shown
    status = onprem.status()
    assert status["last_error"] == (
        f"MailConnectException: Couldn't connect to host, port: {VHOST}, 465; timeout 10000; "
        "caused by SocksException: General SOCKS server failure"
    )
    assert onprem.source_seen() == [False]
    refused = connector.wait_for_outcome("tls_untrusted")
    assert refused["reply"] == 1
    assert refused["reason"] == (
        "TLS: certificate not trusted (unable to get local issuer certificate): subject "
        "CN=localhost, issuer CN=flowrt Test Intermediate CA,O=flowrt tests"
    )

    # what the hint says to run, on the connector host
    check = subprocess.run(
        ["flowrt", "connector", "check", str(connector.config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, TOKEN_ENV: connector.token},
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert "certificate not trusted" in check.stdout
    truststore = connector.config.parent / "truststore.pem"
    assert (
        f"hint: {VHOST}:465: add the root (and intermediate) certificates of "
        f"CN=flowrt Test Intermediate CA,O=flowrt tests to {truststore}"
    ) in check.stderr


def test_back_end_the_connector_does_not_trust_fails_the_poll_of_a_running_flow(
    onprem: OnPrem,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    connector = start_connector(
        [tcp_tls(f"{VHOST}:993", dovecot.imaps_port)],
        truststore=TestCA("Other Root CA").cert_pem,
    )
    onprem.add_location(connector.token, connector.port)
    onprem.drop_mail("Invoice 2026-0815")
    runtime = onprem.start_runtime()
    flow = onprem.write_flow(
        "invoice-forward",
        sender=SENDER,
        receiver=f"""
            address "127.0.0.1:{postfix.submission_port}"
            protection starttls-mandatory
            auth plain credential "smtp-out"
        """,
    )

    deployed = onprem.cli("deploy", str(flow))

    assert deployed.exit_code == 0, deployed.output
    failed = runtime.wait_for_event("poll failed")
    assert failed["error"] == (
        f"MessagingException: Could not connect to IMAP host: {VHOST}, port: 993;\n"
        "  nested exception is:\n"
        "\tSocksException: General SOCKS server failure"
    )
    assert failed["hint"] == untrusted_hint(f"{VHOST}:993")
    wait_for(lambda: onprem.status()["state"] == "ERROR", "the flow to be in ERROR")
    status = onprem.status()
    # polls that fail are retried with backoff (1s, 2s, ...): one or more failed by now
    assert re.fullmatch(
        rf"\d+ poll\(s\) failed in a row: MessagingException: Could not connect to IMAP "
        rf"host: {VHOST}, port: 993\b.*",
        status["last_error"],
    ), status["last_error"]
    shown = onprem.ok("status")
    assert "invoice-forward  1        ERROR" in shown
    assert runtime.stop() == 0
    assert onprem.source_seen() == [False]
    assert connector.wait_for_outcome("tls_untrusted")["virtual"] == f"{VHOST}:993"


def test_connector_tls_lets_auth_plain_through_a_tcp_tls_mapping(
    onprem: OnPrem,
    start_connector: StartConnector,
    test_ca: TestCA,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    # The README recipe: the connector does TLS, the flow logs in with plain auth.
    connector = start_connector(
        [tcp_tls(f"{VHOST}:993", dovecot.imaps_port), tcp_tls(f"{VHOST}:465", postfix.smtps_port)],
        truststore=test_ca.cert_pem,
    )
    onprem.add_location(connector.token, connector.port)
    onprem.ok("keystore", "delete", "test-root")
    tested = onprem.cli(
        "test",
        "imap",
        VHOST,
        "--protection",
        "connector-tls",
        "--proxy",
        "on-premise",
        "--location",
        LOCATION,
        "--credential",
        "plant-mailbox",
    )
    assert tested.exit_code == 0, tested.output
    assert f"{VHOST}:993 (connector-tls) via location {LOCATION}" in tested.output
    assert "verdict: OK" in tested.output
    direct = onprem.cli("test", "imap", VHOST, "--protection", "connector-tls")
    assert direct.exit_code == 2
    assert "--protection connector-tls" in direct.output and "--proxy on-premise" in direct.output

    plain = {
        "sender": f"""
            address "{VHOST}"
            proxy on-premise location "{LOCATION}"
            protection connector-tls
            auth plain credential "plant-mailbox"
        """,
        "receiver": f"""
            address "{VHOST}"
            proxy on-premise location "{LOCATION}"
            protection connector-tls
            auth plain credential "smtp-out"
        """,
    }
    flow = onprem.write_flow("invoice-forward", **plain)
    valid = onprem.cli("validate", str(flow))
    assert valid.exit_code == 0, valid.output
    assert "warning" not in valid.output
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0816")

    run = onprem.run_once()

    assert run.code == 0, run.log
    arrived = onprem.dovecot.wait_for_message(onprem.target.address, timeout=20)
    assert b"Subject: Fwd: Invoice 2026-0816" in arrived[2]
    relayed = {e["virtual"] for e in connector.events if e["event"] == "connected"}
    assert relayed == {f"{VHOST}:993", f"{VHOST}:465"}
