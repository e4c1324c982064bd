"""``flowrt test smtp|imap HOST:PORT --proxy on-premise --location plant-1``: the connectivity
tests reach the mail servers through the connector the way a flow does, and say why not.
"""

from __future__ import annotations

import pytest
from click.testing import Result

from tests.onpremise.conftest import (
    LOCATION,
    VHOST,
    Connector,
    OnPrem,
    StartConnector,
    tcp,
    tcp_tls,
)
from tests.servers import DovecotServer, PostfixServer, TestCA

pytestmark = pytest.mark.servers

VIA = ("--proxy", "on-premise", "--location", LOCATION)


@pytest.fixture
def connector(
    onprem: OnPrem,
    start_connector: StartConnector,
    test_ca: TestCA,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> Connector:
    started = start_connector(
        [
            tcp(f"{VHOST}:143", dovecot.imap_port),
            tcp(f"{VHOST}:587", postfix.submission_port),
            tcp_tls(f"{VHOST}:993", dovecot.imaps_port),
            # Postfix' SMTPS port behind a name the connector's truststore cannot vouch for
            tcp_tls(f"{VHOST}:465", postfix.smtps_port, tls_name="smtp.plant.example"),
        ],
        truststore=test_ca.cert_pem,
    )
    onprem.add_location(started.token, started.port)
    return started


def stages(result: Result) -> dict[str, str]:
    """``stage -> "ok ..."/"FAILED ..."`` from the text report (the last line per stage)."""
    found = {}
    for line in result.output.splitlines():
        parts = line.split(maxsplit=1)
        if line.startswith("  ") and len(parts) == 2:
            found[parts[0]] = parts[1]
    return found


def test_smtp_through_a_tcp_mapping(onprem: OnPrem, connector: Connector) -> None:
    result = onprem.cli(
        "test", "smtp", f"{VHOST}:587", *VIA, "--auth", "plain", "--credential", "smtp-out"
    )

    assert result.exit_code == 0, result.output
    seen = stages(result)
    assert seen["connect"].startswith(
        f"ok     {VHOST}:587 (location plant-1 via 127.0.0.1:{connector.port}) in "
    )
    assert seen["tls"].startswith("ok     TLSv1.")
    assert seen["certificate"] == "ok     chain of 2"
    assert seen["auth"].startswith("ok     235 ")
    assert result.output.splitlines()[-1] == (
        f"verdict: OK: smtp {VHOST}:587 (starttls-mandatory) via location plant-1"
    )


def test_smtp_to_an_unmapped_host(onprem: OnPrem, connector: Connector) -> None:
    result = onprem.cli("test", "smtp", "smtp.plant.example:25", *VIA)

    assert result.exit_code == 1
    assert (
        # the receiver's wording: the same failure reads the same in a flow's MPL
        "MailConnectException: Couldn't connect to host, port: smtp.plant.example, 25; "
        "timeout 30000\n"
        "  nested exception is:\n"
        "\tSocksException: Connection not allowed by ruleset\n"
        "hint: add a mapping for smtp.plant.example:25 in location plant-1\n"
        "verdict: FAILED: smtp smtp.plant.example:25 (starttls-mandatory) via location "
        "plant-1: Connection not allowed by ruleset\n"
    ) in result.output
    assert connector.wait_for_outcome("not_allowed")["virtual"] == "smtp.plant.example:25"


def test_imap_through_tcp_and_tcp_tls_mappings(onprem: OnPrem, connector: Connector) -> None:
    onprem.drop_mail("Invoice 2026-0815")

    starttls = onprem.cli(
        "test", "imap", f"{VHOST}:143", *VIA, "--credential", "plant-mailbox",
        "--check-mailbox", "INBOX",
    )  # fmt: skip
    implicit = onprem.cli(
        "test", "imap", f"{VHOST}:993", "--protection", "off", *VIA,
        "--auth", "encrypted", "--credential", "plant-mailbox",
    )  # fmt: skip

    assert starttls.exit_code == 0, starttls.output
    assert stages(starttls)["tls"].startswith("ok     TLSv1.")  # the runtime's own handshake
    assert stages(starttls)["mailbox"].startswith("ok     INBOX: 1 message(s), 1 unread")
    assert implicit.exit_code == 0, implicit.output
    assert "tls" not in stages(implicit)  # the connector did TLS with Dovecot's IMAPS port
    assert stages(implicit)["auth"].startswith("ok     ")
    assert implicit.output.splitlines()[-1] == (
        f"verdict: OK: imap {VHOST}:993 (off) via location plant-1"
    )
    assert onprem.source_seen() == [False]  # a connectivity test changes nothing


def test_imap_to_a_back_end_the_connector_does_not_trust(
    onprem: OnPrem, start_connector: StartConnector, dovecot: DovecotServer
) -> None:
    connector = start_connector(
        [tcp_tls(f"{VHOST}:993", dovecot.imaps_port)], truststore=TestCA("Other CA").cert_pem
    )
    onprem.add_location(connector.token, connector.port)

    result = onprem.cli("test", "imap", f"{VHOST}:993", "--protection", "off", *VIA)

    assert result.exit_code == 1
    assert (
        f"MessagingException: Could not connect to IMAP host: {VHOST}, port: 993\n"
        "  nested exception is:\n"
        "\tSocksException: General SOCKS server failure\n"
        "hint: the connector for location plant-1 could not complete the connection to "
        f"{VHOST}:993; `flowrt connector check` on the connector host shows why (a tcp-tls "
        "back end whose certificate its truststore does not trust, a TLS handshake failure, "
        "or max_connections reached)\n"
    ) in result.output
    assert connector.wait_for_outcome("tls_untrusted")["reply"] == 1


def test_smtp_to_a_tcp_tls_back_end_whose_name_is_not_the_mappings_tls_name(
    onprem: OnPrem, connector: Connector
) -> None:
    result = onprem.cli("test", "smtp", f"{VHOST}:465", "--protection", "off", *VIA)

    assert result.exit_code == 1
    assert "\tSocksException: General SOCKS server failure\n" in result.output
    assert "`flowrt connector check` on the connector host shows why" in result.output
    refused = connector.wait_for_outcome("tls_untrusted")
    assert "does not match the name 'smtp.plant.example'" in refused["reason"]


def test_trust_hint_of_a_connectivity_test_goes_through_the_location(
    onprem: OnPrem, connector: Connector
) -> None:
    onprem.ok("keystore", "delete", "test-root")

    result = onprem.cli("test", "smtp", f"{VHOST}:587", *VIA)

    assert result.exit_code == 1
    assert (
        f"run `flowrt test smtp {VHOST}:587 --protection starttls-mandatory --proxy on-premise "
        "--location plant-1 --import`"
    ) in result.output
