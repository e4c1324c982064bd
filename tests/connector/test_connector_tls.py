"""tcp-tls mappings: the connector does TLS to the back end, trusting only its own truststore."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from python_socks import ProxyError

from flowrt.connector import check_mappings, relay
from tests.connector.connector_support import (
    Backends,
    MakeConfig,
    StartConnector,
    closed_port,
    read_to_eof,
    socks_connect,
    tcp,
    tcp_tls,
)
from tests.servers.ca import ServerCert, TestCA

VIRTUAL = "mail.plant.example"


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    # TLS has no half-close, so after the client's EOF a TLS back end gets a linger time
    # to finish its answer (10 s by default); the tests do not wait that long.
    monkeypatch.setattr(relay, "HALF_CLOSE_LINGER", 0.5)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("Plant Root CA")


@pytest.fixture(scope="module")
def cert(ca: TestCA) -> ServerCert:
    # Issued by an intermediate, sent in the chain; the truststore holds only the root.
    return ca.new_intermediate("Plant Issuing CA").issue_server_cert(
        ("localhost", "127.0.0.1", "mail.internal.example")
    )


@pytest.fixture
def truststore(tmp_path: Path, ca: TestCA) -> Path:
    return ca.write_cert(tmp_path / "plant-ca.pem")


@pytest.fixture
def other_truststore(tmp_path: Path) -> Path:
    return TestCA("Some Other Root CA").write_cert(tmp_path / "other-ca.pem")


async def test_tls_back_end_with_plain_client_side(
    make_config: MakeConfig,
    start_connector: StartConnector,
    backends: Backends,
    cert: ServerCert,
    truststore: Path,
) -> None:
    port = await backends.start(ssl_context=cert.server_context())
    config = make_config([tcp_tls(f"{VIRTUAL}:993", f"127.0.0.1:{port}")], truststore=truststore)
    server, events = await start_connector(config)
    reader, writer = await socks_connect(server.port, VIRTUAL, 993)
    # The client speaks plain bytes; the connector encrypts them to the back end.
    writer.write(b"a1 CAPABILITY\r\n")
    async with asyncio.timeout(5):
        assert await reader.readexactly(15) == b"a1 CAPABILITY\r\n"
    writer.close()
    await events.wait_for("closed")
    [connected] = events.named("connected")
    assert connected["mapping"] == f"{VIRTUAL}:993 -> 127.0.0.1:{port} (tcp-tls)"
    [closed] = events.named("closed")
    assert (closed["bytes_up"], closed["bytes_down"]) == (15, 15)


async def test_tls_back_end_may_answer_after_the_client_eof(
    make_config: MakeConfig,
    start_connector: StartConnector,
    backends: Backends,
    cert: ServerCert,
    truststore: Path,
) -> None:
    # The back end cannot be told of the client's EOF: it still gets to answer within the
    # linger time, then both sides are closed.

    async def slow_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        await asyncio.sleep(0.1)
        writer.write(b"* BYE logging out\r\n")
        await writer.drain()
        await asyncio.sleep(30)  # and never closes by itself

    port = await backends.start(slow_answer, ssl_context=cert.server_context())
    config = make_config([tcp_tls(f"{VIRTUAL}:993", f"127.0.0.1:{port}")], truststore=truststore)
    server, events = await start_connector(config)
    reader, writer = await socks_connect(server.port, VIRTUAL, 993)
    writer.write(b"a2 LOGOUT\r\n")
    writer.write_eof()
    assert await read_to_eof(reader, timeout=5) == b"* BYE logging out\r\n"
    writer.close()
    await events.wait_for("closed")
    assert events.named("closed")[0]["closed_by"] == "client"


async def test_tls_name_is_checked_against_tls_name(
    make_config: MakeConfig,
    start_connector: StartConnector,
    backends: Backends,
    cert: ServerCert,
    truststore: Path,
) -> None:
    port = await backends.start(ssl_context=cert.server_context())
    config = make_config(
        [
            tcp_tls(f"{VIRTUAL}:993", f"127.0.0.1:{port}", tls_name="mail.internal.example"),
            tcp_tls(f"{VIRTUAL}:994", f"127.0.0.1:{port}", tls_name="mail.elsewhere.example"),
        ],
        truststore=truststore,
    )
    server, events = await start_connector(config)
    _, writer = await socks_connect(server.port, VIRTUAL, 993)
    writer.close()
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 994)
    assert caught.value.error_code == 0x01
    [rejected] = events.named("rejected")
    assert rejected["outcome"] == "tls_untrusted"
    assert "does not match the name 'mail.elsewhere.example'" in rejected["reason"]
    assert "names localhost, mail.internal.example, 127.0.0.1" in rejected["reason"]


async def test_untrusted_back_end_is_general_failure_with_the_reason_logged(
    make_config: MakeConfig,
    start_connector: StartConnector,
    backends: Backends,
    cert: ServerCert,
    other_truststore: Path,
) -> None:
    port = await backends.start(ssl_context=cert.server_context())
    config = make_config(
        [tcp_tls(f"{VIRTUAL}:993", f"127.0.0.1:{port}")], truststore=other_truststore
    )
    server, events = await start_connector(config)
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 993)
    assert caught.value.error_code == 0x01
    assert "General SOCKS server failure" in str(caught.value)
    [rejected] = events.named("rejected")
    assert rejected["outcome"] == "tls_untrusted"
    assert rejected["reason"].startswith("TLS: certificate not trusted (")
    assert "subject CN=localhost" in rejected["reason"]
    assert "issuer CN=Plant Issuing CA,O=flowrt tests" in rejected["reason"]


async def test_tcp_tls_to_a_plain_port_is_a_tls_failure(
    make_config: MakeConfig,
    start_connector: StartConnector,
    backends: Backends,
    truststore: Path,
) -> None:
    async def imap_greeting(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK IMAP4rev1 ready\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    port = await backends.start(imap_greeting)
    config = make_config([tcp_tls(f"{VIRTUAL}:993", f"127.0.0.1:{port}")], truststore=truststore)
    server, events = await start_connector(config)
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 993)
    assert caught.value.error_code == 0x01
    [rejected] = events.named("rejected")
    assert rejected["outcome"] == "tls_failed"
    assert "is it a TLS port?" in rejected["reason"]


async def test_check_reports_every_mapping(
    make_config: MakeConfig,
    backends: Backends,
    cert: ServerCert,
    truststore: Path,
    other_truststore: Path,
) -> None:
    plain = await backends.start()
    tls = await backends.start(ssl_context=cert.server_context())
    refused = closed_port()
    config = make_config(
        [
            tcp(f"{VIRTUAL}:143", f"127.0.0.1:{plain}"),
            tcp_tls(f"{VIRTUAL}:993", f"localhost:{tls}"),
            tcp(f"{VIRTUAL}:110", f"127.0.0.1:{refused}"),
            tcp(f"{VIRTUAL}:25", "nonexistent.invalid:25"),
            tcp_tls(f"{VIRTUAL}:995", f"127.0.0.1:{tls}", tls_name="wrong.example"),
        ],
        truststore=truststore,
    )
    lines = [r.line() for r in await check_mappings(config)]
    assert lines[0] == f"{VIRTUAL}:143 -> 127.0.0.1:{plain} (tcp): reachable"
    assert lines[1] == f"{VIRTUAL}:993 -> localhost:{tls} (tcp-tls): reachable"
    assert lines[2] == (
        f"{VIRTUAL}:110 -> 127.0.0.1:{refused} (tcp): refused (nothing listens on "
        f"127.0.0.1:{refused})"
    )
    assert lines[3].startswith(
        f"{VIRTUAL}:25 -> nonexistent.invalid:25 (tcp): unreachable (cannot resolve "
        "nonexistent.invalid: "
    )
    assert lines[4].startswith(
        f"{VIRTUAL}:995 -> 127.0.0.1:{tls} (tcp-tls): TLS: certificate does not match the "
        "name 'wrong.example'"
    )

    untrusted = make_config(
        [tcp_tls(f"{VIRTUAL}:993", f"127.0.0.1:{tls}")], truststore=other_truststore
    )
    [result] = await check_mappings(untrusted)
    assert not result.ok and result.reply == 0x01
    assert result.line() == (
        f"{VIRTUAL}:993 -> 127.0.0.1:{tls} (tcp-tls): TLS: certificate not trusted "
        "(unable to get local issuer certificate): subject CN=localhost, "
        "issuer CN=Plant Issuing CA,O=flowrt tests"
    )
