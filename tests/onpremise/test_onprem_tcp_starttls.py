"""``tcp`` mappings: the connector passes bytes through and the runtime does STARTTLS end to
end with the mail server, so trust comes from the tenant keystore and the runtime checks
the virtual host against the server's certificate (it carries mail.plant.example).

The test certificate has no smtp.plant.example, so SMTP goes through mail.plant.example too,
on the submission port (587: STARTTLS required, then AUTH).
"""

from __future__ import annotations

import shlex

import pytest

from tests.onpremise.conftest import LOCATION, VHOST, OnPrem, StartConnector, tcp
from tests.servers import DovecotServer, PostfixServer

pytestmark = pytest.mark.servers

SENDER = f"""
    address "{VHOST}:143"
    proxy on-premise location "{LOCATION}"
    protection starttls-mandatory
    auth plain credential "plant-mailbox"
"""
RECEIVER = f"""
    address "{VHOST}:587"
    proxy on-premise location "{LOCATION}"
    protection starttls-mandatory
    auth plain credential "smtp-out"
"""


def test_flow_polls_and_delivers_through_tcp_mappings_with_starttls_end_to_end(
    onprem: OnPrem,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    connector = start_connector(
        [tcp(f"{VHOST}:143", dovecot.imap_port), tcp(f"{VHOST}:587", postfix.submission_port)]
    )
    onprem.add_location(connector.token, connector.port)
    flow = onprem.write_flow("invoice-forward", sender=SENDER, receiver=RECEIVER)
    assert "deployed invoice-forward version 1" in onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0815 for order 4711")
    onprem.drop_mail("Our autumn newsletter")  # filtered out: finished with, not sent

    run = onprem.run_once()

    assert run.code == 0, run.log
    (forwarded,) = onprem.arrived()
    assert forwarded["Subject"] == "Fwd: Invoice 2026-0815 for order 4711"
    assert forwarded["X-Forwarded-By"] == "flowrt"
    assert "EUR 1.250,00" in forwarded.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # Postfix took it over TLS (the runtime's STARTTLS, relayed by the connector as bytes)
    assert "using TLSv1" in " ".join(forwarded.get_all("Received", []))
    assert onprem.source_seen() == [True, True]
    assert f"user=<{onprem.source.address}>, method=PLAIN" in dovecot.log()
    status = onprem.status()
    assert (status["completed"], status["failed"], status["last_error"]) == (2, 0, "")
    relayed = {e["virtual"]: e["mapping"] for e in connector.events if e["event"] == "connected"}
    assert relayed == {
        f"{VHOST}:143": f"{VHOST}:143 -> 127.0.0.1:{dovecot.imap_port} (tcp)",
        f"{VHOST}:587": f"{VHOST}:587 -> 127.0.0.1:{postfix.submission_port} (tcp)",
    }
    assert connector.token not in run.log


def test_runtime_checks_the_virtual_host_against_the_server_certificate(
    onprem: OnPrem, start_connector: StartConnector, dovecot: DovecotServer
) -> None:
    """A virtual host the certificate does not carry fails the runtime's host name check,
    and the hint says to make the virtual host one of the certificate's names."""
    connector = start_connector([tcp("imap.plant.example:143", dovecot.imap_port)])
    onprem.add_location(connector.token, connector.port)
    flow = onprem.write_flow(
        "invoice-forward",
        sender=SENDER.replace(f"{VHOST}:143", "imap.plant.example:143"),
        receiver=RECEIVER,
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0815")

    run = onprem.run_once()

    assert run.code == 1, run.log
    (failed,) = run.events("poll failed")[:1]
    assert failed["error"] == (
        "MessagingException: Could not connect to IMAP host: imap.plant.example, port: 143;\n"
        "  nested exception is:\n"
        "\tSSLHandshakeException: No subject alternative names matching imap.plant.example "
        "found"
    )
    assert failed["hint"] == (
        "the server's certificate is for localhost, 127.0.0.1, ::1, mail.test.example, "
        "mail.plant.example; use one of these names in the address (behind a connector, make "
        "the virtual host one of them)"
    )
    assert onprem.source_seen() == [False]
    assert onprem.status()["last_error"].startswith("1 poll(s) failed in a row: ")


def test_receiver_trust_comes_from_the_tenant_keystore_and_the_hint_imports_it(
    onprem: OnPrem,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    """Without the root in the keystore the STARTTLS handshake (the runtime's own) fails; the
    hint's command reaches the server through the same location, imports the chain, and the
    next poll delivers. The connector's truststore plays no part in a tcp mapping."""
    connector = start_connector([tcp(f"{VHOST}:587", postfix.submission_port)])
    onprem.add_location(connector.token, connector.port)
    onprem.ok("keystore", "delete", "test-root")
    # the sender needs no TLS here (CRAM-MD5 on the plain port), so only the receiver's
    # handshake depends on the keystore
    flow = onprem.write_flow(
        "invoice-forward",
        sender=f"""
            address "127.0.0.1:{dovecot.imap_port}"
            protection off
            auth encrypted credential "plant-mailbox"
        """,
        receiver=RECEIVER,
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0815")

    first = onprem.run_once()

    assert first.code == 1, first.log
    _, shown = onprem.failed_entry("ESCALATED")
    fix = (
        f"flowrt test smtp {VHOST}:587 --protection starttls-mandatory "
        f"--proxy on-premise --location {LOCATION} --import"
    )
    assert (
        f"MessagingException: Could not connect to SMTP host: {VHOST}, port: 587;\n"
        "  nested exception is:\n"
        "\tSSLHandshakeException: PKIX path building failed: unable to find valid "
        "certification path to requested target (server certificate issued by "
        "CN=flowrt Test Intermediate CA)\n"
        "hint: the tenant keystore has no certificate for CN=flowrt Test Intermediate CA; "
        f"run `{fix}`\n"
    ) in shown
    assert onprem.source_seen() == [False]

    imported = onprem.cli(*shlex.split(fix)[1:])
    assert imported.exit_code == 0, imported.output
    assert "imported" in imported.output

    second = onprem.run_once()

    assert second.code == 0, second.log
    assert [m["Subject"] for m in onprem.arrived()] == ["Fwd: Invoice 2026-0815"]
    assert onprem.source_seen() == [True]


def test_sender_trust_hint_imports_the_chain_through_the_connector(
    onprem: OnPrem,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    """The same for the IMAP sender: its hint is a `flowrt test imap` over the location."""
    connector = start_connector([tcp(f"{VHOST}:143", dovecot.imap_port)])
    onprem.add_location(connector.token, connector.port)
    onprem.ok("keystore", "delete", "test-root")
    flow = onprem.write_flow(
        "invoice-forward",
        sender=SENDER,
        receiver=f"""
            address "127.0.0.1:{postfix.submission_port}"
            protection starttls-mandatory
            auth plain credential "smtp-out"
        """,
    )
    onprem.ok("deploy", str(flow))
    onprem.drop_mail("Invoice 2026-0815")

    first = onprem.run_once()

    assert first.code == 1, first.log
    (failed,) = first.events("poll failed")[:1]
    assert failed["error"] == (
        f"MessagingException: Could not connect to IMAP host: {VHOST}, port: 143;\n"
        "  nested exception is:\n"
        "\tSSLHandshakeException: PKIX path building failed: unable to find valid "
        "certification path to requested target (server certificate issued by "
        "CN=flowrt Test Intermediate CA)"
    )
    fix = (
        f"flowrt test imap {VHOST}:143 --protection starttls-mandatory "
        f"--proxy on-premise --location {LOCATION} --import"
    )
    assert failed["hint"] == (
        f"the tenant keystore has no certificate for CN=flowrt Test Intermediate CA; run `{fix}`"
    )

    imported = onprem.cli(*shlex.split(fix)[1:])
    assert imported.exit_code == 0, imported.output

    second = onprem.run_once()

    assert second.code == 0, second.log
    assert [m["Subject"] for m in onprem.arrived()] == ["Fwd: Invoice 2026-0815"]
    assert onprem.source_seen() == [True]
