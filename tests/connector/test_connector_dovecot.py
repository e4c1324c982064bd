"""The connector in front of the real Dovecot: plain IMAP, STARTTLS end to end, and IMAPS
terminated by the connector (tcp-tls), with curl and python-socks as the cloud-side clients."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.connector.connector_support import (
    LOCATION,
    TOKEN,
    MakeConfig,
    StartConnector,
    socks_connect,
    tcp,
    tcp_tls,
)
from tests.servers.ca import TestCA
from tests.servers.dovecot import DovecotServer, MailboxUser

VIRTUAL = "mail.plant.example"
MESSAGE = (
    b"From: plant@example.com\r\nTo: accounting@example.com\r\n"
    b"Subject: invoice 4711\r\n\r\nthrough the connector\r\n"
)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "20",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


def via(port: int) -> list[str]:
    return ["--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", f"{LOCATION}:{TOKEN}"]


@pytest.fixture
def truststore(tmp_path: Path, test_ca: TestCA) -> Path:
    return test_ca.write_cert(tmp_path / "mail-ca.pem")


async def test_imap_greeting_through_a_tcp_mapping(
    make_config: MakeConfig, start_connector: StartConnector, dovecot: DovecotServer
) -> None:
    config = make_config([tcp(f"{VIRTUAL}:143", f"127.0.0.1:{dovecot.imap_port}")])
    server, _ = await start_connector(config)
    reader, writer = await socks_connect(server.port, VIRTUAL, 143)
    async with asyncio.timeout(10):
        greeting = await reader.readline()
        assert greeting.startswith(b"* OK ")
        writer.write(b"a1 LOGOUT\r\n")
        rest = await reader.read()
    assert b"* BYE" in rest and b"a1 OK" in rest
    writer.close()


async def test_fetch_with_starttls_end_to_end_over_a_tcp_mapping(
    make_config: MakeConfig,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    truststore: Path,
) -> None:
    # tcp: the TLS handshake is between the client and Dovecot; the client trusts the CA.
    dovecot.append(mailbox_user.address, "INBOX", MESSAGE)
    config = make_config([tcp(f"{VIRTUAL}:143", f"127.0.0.1:{dovecot.imap_port}")])
    server, events = await start_connector(config)
    code, out, err = await curl(
        *via(server.port),
        "--ssl-reqd",
        "--cacert",
        str(truststore),
        "--user",
        f"{mailbox_user.address}:{mailbox_user.password}",
        f"imap://{VIRTUAL}:143/INBOX;UID=1",
    )
    assert code == 0, err
    assert out == MESSAGE
    await events.wait_for("closed")
    assert events.named("closed")[0]["bytes_down"] > len(MESSAGE)


async def test_fetch_from_imaps_through_a_tcp_tls_mapping(
    make_config: MakeConfig,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    truststore: Path,
) -> None:
    # tcp-tls: the connector does TLS to Dovecot's IMAPS port; the client speaks plain IMAP.
    dovecot.append(mailbox_user.address, "INBOX", MESSAGE)
    config = make_config(
        [
            tcp_tls(
                f"{VIRTUAL}:993", f"127.0.0.1:{dovecot.imaps_port}", tls_name="mail.plant.example"
            )
        ],
        truststore=truststore,
    )
    server, events = await start_connector(config)
    code, out, err = await curl(
        *via(server.port),
        "--user",
        f"{mailbox_user.address}:{mailbox_user.password}",
        f"imap://{VIRTUAL}:993/INBOX;UID=1",
    )
    assert code == 0, err
    assert out == MESSAGE
    assert events.named("connected")[0]["mapping"].endswith("(tcp-tls)")


async def test_imaps_with_an_untrusted_truststore_is_refused(
    make_config: MakeConfig,
    start_connector: StartConnector,
    dovecot: DovecotServer,
    tmp_path: Path,
) -> None:
    other = TestCA("Not The Mail CA").write_cert(tmp_path / "other.pem")
    config = make_config(
        [tcp_tls(f"{VIRTUAL}:993", f"127.0.0.1:{dovecot.imaps_port}")], truststore=other
    )
    server, events = await start_connector(config)
    code, _, err = await curl(*via(server.port), f"imap://{VIRTUAL}:993/")
    assert code == 97, err  # CURLE_PROXY
    [rejected] = events.named("rejected")
    assert rejected["outcome"] == "tls_untrusted" and rejected["reply"] == 1
    assert "issuer CN=flowrt Test Intermediate CA" in rejected["reason"]
