"""The connector end to end on loopback: python-socks and curl as clients, asyncio back ends."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from python_socks import ProxyError

from flowrt.connector import ConnectorServer, dial, make_logger, relay
from tests.connector.connector_support import (
    LOCATION,
    TOKEN,
    Backends,
    Events,
    Handler,
    MakeConfig,
    StartConnector,
    closed_port,
    connect_request,
    digest_handler,
    echo_handler,
    greeting_auth,
    ipv6_available,
    raw_client,
    read_to_eof,
    socks_connect,
    tcp,
)

VIRTUAL = "mail.plant.example"


@pytest.fixture(autouse=True, params=["splice", "stream"])
def relay_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with both relays: splice(2) (Linux) and asyncio streams."""
    if request.param == "splice" and not relay.USE_SPLICE:
        pytest.skip("no splice(2) on this system")
    monkeypatch.setattr(relay, "USE_SPLICE", request.param == "splice")
    return str(request.param)


StartRelay = Callable[..., Awaitable[tuple[ConnectorServer, Events, int]]]


@pytest.fixture
def start_relay(
    make_config: MakeConfig, start_connector: StartConnector, backends: Backends
) -> StartRelay:
    """``await start_relay(handler, **top)``: a back end on loopback (``handler``, echo by
    default) and a connector mapping ``VIRTUAL:143`` to it, with top-level config keys
    ``top``; returns the connector, its log events and the back end's port. With
    ``handler=None`` there is no back end: the mapping points at 127.0.0.1:1, for tests that
    end in the SOCKS handshake."""

    async def start(
        handler: Handler | None = echo_handler, **top: Any
    ) -> tuple[ConnectorServer, Events, int]:
        port = 1 if handler is None else await backends.start(handler)
        config = make_config([tcp(f"{VIRTUAL}:143", f"127.0.0.1:{port}")], **top)
        server, events = await start_connector(config)
        return server, events, port

    return start


async def echo_roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"a001 NOOP\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        return await reader.readexactly(11)


async def test_tcp_mapping_relays_both_ways(start_relay: StartRelay) -> None:
    server, events, port = await start_relay()
    reader, writer = await socks_connect(server.port, VIRTUAL, 143)
    assert await echo_roundtrip(reader, writer) == b"a001 NOOP\r\n"
    writer.close()
    await events.wait_for("closed")
    [connected] = events.named("connected")
    assert connected["client"].startswith("127.0.0.1:")
    assert connected["location"] == LOCATION
    assert connected["virtual"] == f"{VIRTUAL}:143"
    assert connected["mapping"] == f"{VIRTUAL}:143 -> 127.0.0.1:{port} (tcp)"
    assert connected["reply"] == 0
    [closed] = events.named("closed")
    assert closed["bytes_up"] == 11 and closed["bytes_down"] == 11
    assert closed["closed_by"] == "client"


async def test_virtual_names_match_case_insensitively_and_ip_virtuals(
    make_config: MakeConfig, start_connector: StartConnector, backends: Backends
) -> None:
    port = await backends.start()
    config = make_config(
        [
            tcp(f"{VIRTUAL}:143", f"127.0.0.1:{port}"),
            tcp("10.1.2.3:143", f"127.0.0.1:{port}"),
            tcp("[fd00::5]:143", f"127.0.0.1:{port}"),
        ]
    )
    server, _ = await start_connector(config)
    for host in ("MAIL.Plant.Example", "mail.plant.example.", "10.1.2.3", "fd00:0::5"):
        reader, writer = await socks_connect(server.port, host, 143)
        assert await echo_roundtrip(reader, writer) == b"a001 NOOP\r\n", host
        writer.close()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
async def test_ipv6_listen_and_ipv6_back_end(
    make_config: MakeConfig, start_connector: StartConnector, backends: Backends
) -> None:
    port = await backends.start(host="::1")
    config = make_config([tcp(f"{VIRTUAL}:143", f"[::1]:{port}")], listen="[::1]:0")
    server, events = await start_connector(config)
    assert server.addresses[0][0] == "::1"
    reader, writer = await socks_connect(server.port, VIRTUAL, 143, proxy_host="::1")
    assert await echo_roundtrip(reader, writer) == b"a001 NOOP\r\n"
    writer.close()
    assert events.named("connected")[0]["client"].startswith("[::1]:")


async def test_unmapped_target_is_not_allowed_by_ruleset(start_relay: StartRelay) -> None:
    server, events, port = await start_relay()
    for host, dport in ((VIRTUAL, 993), ("other.plant.example", 143), ("127.0.0.1", port)):
        with pytest.raises(ProxyError) as caught:
            await socks_connect(server.port, host, dport)
        assert caught.value.error_code == 0x02
        assert "Connection not allowed by ruleset" in str(caught.value)
    rejected = events.named("rejected")
    assert [e["outcome"] for e in rejected] == ["not_allowed"] * 3
    assert rejected[0]["reply"] == 2
    assert rejected[0]["reply_text"] == "Connection not allowed by ruleset"
    assert rejected[0]["virtual"] == f"{VIRTUAL}:993"


async def test_stopped_back_end_is_connection_refused(
    make_config: MakeConfig, start_connector: StartConnector
) -> None:
    port = closed_port()
    server, events = await start_connector(
        make_config([tcp(f"{VIRTUAL}:143", f"127.0.0.1:{port}")])
    )
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 143)
    assert caught.value.error_code == 0x05
    [rejected] = events.named("rejected")
    assert rejected["outcome"] == "refused"
    assert rejected["reason"] == f"nothing listens on 127.0.0.1:{port}"


async def test_unresolvable_back_end_is_host_unreachable(
    make_config: MakeConfig, start_connector: StartConnector
) -> None:
    server, events = await start_connector(
        make_config([tcp(f"{VIRTUAL}:143", "nonexistent.invalid:143")])
    )
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 143)
    assert caught.value.error_code == 0x04
    assert "Host unreachable" in str(caught.value)
    [rejected] = events.named("rejected")
    assert rejected["outcome"] == "dns_failure"
    assert "cannot resolve nonexistent.invalid" in rejected["reason"]


async def test_silent_back_end_is_host_unreachable_after_connect_timeout(
    make_config: MakeConfig, start_connector: StartConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host that drops SYNs cannot be made portably on loopback: the back end's connect
    # is made to hang instead.
    async def hanging_connect(family: int, address: tuple[Any, ...]) -> Any:
        await asyncio.sleep(3600)

    monkeypatch.setattr(dial, "connect_socket", hanging_connect)
    config = make_config([tcp(f"{VIRTUAL}:143", "127.0.0.1:143")], connect_timeout="300ms")
    server, events = await start_connector(config)
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 143)
    assert caught.value.error_code == 0x04
    [rejected] = events.named("rejected")
    assert rejected["outcome"] == "timeout"
    assert rejected["reason"] == "127.0.0.1:143: no answer within 0.3s"


async def test_wrong_token_fails_authentication_and_closes(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay()
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 143, token="not-the-token-0123456789")
    assert "authentication failure" in str(caught.value)
    # On the wire: method 0x02 chosen, then RFC 1929 status 0x01 and the connection closes.
    reader, writer = await raw_client(server.port)
    writer.write(greeting_auth(token="not-the-token-0123456789"))
    assert await read_to_eof(reader) == bytes([5, 2, 1, 1])
    writer.close()
    outcomes = [e["outcome"] for e in events.named("rejected")]
    assert outcomes == ["bad_token", "bad_token"]


async def test_unknown_location_is_network_unreachable(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay()
    # The right token, but a location this connector does not serve: CONNECT gets 0x03.
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 143, user="plant-2")
    assert caught.value.error_code == 0x03
    assert "Network unreachable" in str(caught.value)
    # A wrong token with an unknown location: authentication fails, logged as unknown location.
    with pytest.raises(ProxyError, match="authentication failure"):
        await socks_connect(server.port, VIRTUAL, 143, user="plant-2", token="x" * 20)
    rejected = events.named("rejected")
    assert [e["outcome"] for e in rejected] == ["unknown_location", "unknown_location"]
    assert rejected[0]["location"] == "plant-2" and rejected[0]["reply"] == 3
    assert "'plant-2' is not served here" in rejected[0]["reason"]
    assert "reply" not in rejected[1]


async def test_no_auth_client_gets_no_acceptable_method(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay(None)
    reader, writer = await raw_client(server.port)
    writer.write(bytes([5, 1, 0]))
    assert await read_to_eof(reader) == bytes([5, 0xFF])
    writer.close()
    assert events.outcomes() == ["no_acceptable_method"]


@pytest.mark.parametrize("command", [2, 3, 9])
async def test_bind_and_udp_associate_are_not_supported(
    start_relay: StartRelay, command: int
) -> None:
    server, events, _ = await start_relay(None)
    reader, writer = await raw_client(server.port)
    writer.write(greeting_auth() + connect_request(VIRTUAL, 143, command=command))
    answer = await read_to_eof(reader)
    assert answer[:4] == bytes([5, 2, 1, 0])  # method, auth ok
    assert answer[4:6] == bytes([5, 7])  # Command not supported
    writer.close()
    assert events.outcomes() == ["command_not_supported"]


async def test_pipelined_handshake_and_early_data_reach_the_back_end(
    start_relay: StartRelay,
) -> None:
    server, _, _ = await start_relay()
    reader, writer = await raw_client(server.port)
    writer.write(greeting_auth() + connect_request(VIRTUAL, 143) + b"early bytes")
    async with asyncio.timeout(5):
        head = await reader.readexactly(4 + 10)
        assert head[4:6] == bytes([5, 0])
        assert await reader.readexactly(11) == b"early bytes"
    writer.close()


@pytest.mark.parametrize(
    "data, answer",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""),  # not SOCKS: closed without a reply
        (bytes([4, 1, 0, 80, 127, 0, 0, 1, 0]), b""),  # SOCKS4
        (bytes([5, 0]), bytes([5, 0xFF])),  # no methods offered
        (bytes([5, 1, 2, 9, 9]), bytes([5, 2, 1, 1])),  # not RFC 1929
        (greeting_auth() + bytes([5, 1, 0, 7, 0, 0]), bytes([5, 2, 1, 0, 5, 8])),  # bad ATYP
        (greeting_auth() + bytes([5, 1, 0, 3, 0, 0, 25]), bytes([5, 2, 1, 0, 5, 1])),  # empty name
    ],
)
async def test_malformed_input_closes_cleanly(
    start_relay: StartRelay, data: bytes, answer: bytes
) -> None:
    server, events, _ = await start_relay(None)
    reader, writer = await raw_client(server.port)
    writer.write(data)
    got = await read_to_eof(reader)
    assert got[: len(answer)] == answer and len(got) in (len(answer), len(answer) + 8)
    writer.close()
    assert events.outcomes() == ["protocol_error"]
    assert not events.named("internal_error")


async def test_client_leaving_mid_handshake_is_logged_quietly(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay(None)
    _, writer = await raw_client(server.port)
    writer.write(bytes([5, 1]))
    writer.close()
    await events.wait_for("rejected")
    assert events.outcomes() == ["client_closed"]
    assert events.named("rejected")[0]["level"] == "info"


async def test_handshake_time_is_bounded(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay(None, handshake_timeout="300ms")
    reader, writer = await raw_client(server.port)
    writer.write(bytes([5, 1, 2]))  # greeting, then silence
    assert await read_to_eof(reader, timeout=5) == bytes([5, 2])
    writer.close()
    assert events.outcomes() == ["handshake_timeout"]


async def test_idle_connection_is_closed_and_busy_one_is_not(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay(idle_timeout="400ms")
    idle_reader, idle_writer = await socks_connect(server.port, VIRTUAL, 143)
    busy_reader, busy_writer = await socks_connect(server.port, VIRTUAL, 143)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # The busy one talks every 100 ms for 1.2 s, three idle timeouts long.
    while loop.time() - started < 1.2:
        assert await echo_roundtrip(busy_reader, busy_writer) == b"a001 NOOP\r\n"
        await asyncio.sleep(0.1)
    assert await read_to_eof(idle_reader, timeout=1) == b""
    busy_writer.close()
    idle_writer.close()
    await events.wait_for("closed", 2)
    closed_by = sorted(e["closed_by"] for e in events.named("closed"))
    assert closed_by == ["client", "idle_timeout"]


async def test_connection_limit_answers_general_failure(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay(max_connections=2)
    first = await socks_connect(server.port, VIRTUAL, 143)
    second = await socks_connect(server.port, VIRTUAL, 143)
    with pytest.raises(ProxyError) as caught:
        await socks_connect(server.port, VIRTUAL, 143)
    assert caught.value.error_code == 0x01
    assert events.named("rejected")[0]["outcome"] == "connection_limit"
    # Both earlier connections still work; closing one makes room for a new one.
    assert await echo_roundtrip(*second) == b"a001 NOOP\r\n"
    first[1].close()
    await events.wait_for("closed")
    third = await socks_connect(server.port, VIRTUAL, 143)
    assert await echo_roundtrip(*third) == b"a001 NOOP\r\n"
    assert server.active_relays == 2
    second[1].close()
    third[1].close()


async def test_half_close_reaches_the_back_end(
    make_config: MakeConfig, start_connector: StartConnector, backends: Backends
) -> None:
    port = await backends.start(digest_handler)
    server, events = await start_connector(make_config([tcp(f"{VIRTUAL}:25", f"127.0.0.1:{port}")]))
    reader, writer = await socks_connect(server.port, VIRTUAL, 25)
    payload = os.urandom(300_000)
    writer.write(payload)
    writer.write_eof()  # the back end answers only after it has seen the end
    answer = await read_to_eof(reader)
    assert answer == hashlib.sha256(payload).hexdigest().encode() + b"\n"
    writer.close()
    await events.wait_for("closed")
    [closed] = events.named("closed")
    assert closed["bytes_up"] == len(payload) and closed["bytes_down"] == 65
    assert closed["closed_by"] == "client"


async def test_large_transfer_both_ways_keeps_every_byte(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay()
    reader, writer = await socks_connect(server.port, VIRTUAL, 143)
    size, chunk = 20 * 1024 * 1024, os.urandom(1024 * 1024)
    sent = hashlib.sha256()

    async def send() -> None:
        for i in range(size // len(chunk)):
            block = chunk[i:] + chunk[:i]  # not the same MB twenty times
            sent.update(block)
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    async def receive() -> tuple[int, str]:
        got, digest = 0, hashlib.sha256()
        while data := await reader.read(256 * 1024):
            got += len(data)
            digest.update(data)
        return got, digest.hexdigest()

    async with asyncio.timeout(60):
        _, (got, digest) = await asyncio.gather(send(), receive())
    assert got == size and digest == sent.hexdigest()
    writer.close()
    await events.wait_for("closed")
    [closed] = events.named("closed")
    assert closed["bytes_up"] == closed["bytes_down"] == size


async def test_back_end_closing_is_relayed_as_eof(start_relay: StartRelay) -> None:
    async def greet_and_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* BYE server shutting down\r\n")
        await writer.drain()
        writer.close()

    server, events, _ = await start_relay(greet_and_close)
    reader, writer = await socks_connect(server.port, VIRTUAL, 143)
    assert await read_to_eof(reader) == b"* BYE server shutting down\r\n"
    writer.close()
    await events.wait_for("closed")
    assert events.named("closed")[0]["closed_by"] == "backend"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_socks5_hostname_through_the_connector(
    make_config: MakeConfig, start_connector: StartConnector, backends: Backends
) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"hello through the connector\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    port = await backends.start(http)
    server, events = await start_connector(
        make_config([tcp("intranet.plant.example:8080", f"127.0.0.1:{port}")])
    )
    base = ["curl", "-sS", "--max-time", "10", "--socks5-hostname", f"127.0.0.1:{server.port}"]
    ok = await _run(
        [*base, "--proxy-user", f"{LOCATION}:{TOKEN}", "http://intranet.plant.example:8080/"]
    )
    assert ok == (0, b"hello through the connector\n")
    code, _ = await _run(
        [*base, "--proxy-user", f"{LOCATION}:{TOKEN}", "http://intranet.plant.example:9999/"]
    )
    assert code == 97  # CURLE_PROXY: the connector refused (not allowed by ruleset)
    assert events.outcomes() == ["connected", "not_allowed"]


async def _run(argv: list[str]) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out


async def test_the_token_never_reaches_the_log(make_config: MakeConfig, backends: Backends) -> None:
    port = await backends.start()
    config = make_config([tcp(f"{VIRTUAL}:143", f"127.0.0.1:{port}")])
    for fmt in ("text", "json"):
        out = io.StringIO()
        server = ConnectorServer(
            config, logger=make_logger(out, "json" if fmt == "json" else "text")
        )
        await server.start()
        try:
            reader, writer = await socks_connect(server.port, VIRTUAL, 143)
            await echo_roundtrip(reader, writer)
            writer.close()
            with pytest.raises(ProxyError):
                await socks_connect(server.port, VIRTUAL, 143, token=TOKEN[::-1])
            with pytest.raises(ProxyError):
                await socks_connect(server.port, VIRTUAL, 143, user="plant-9")
        finally:
            await server.close()
        text = out.getvalue()
        assert "event=listening" in text or '"event": "listening"' in text
        assert "unknown_location" in text and "bad_token" in text
        assert TOKEN not in text and TOKEN[::-1] not in text
    assert TOKEN not in repr(config)


async def test_clients_beyond_the_limit_in_their_handshake_are_closed_at_once(
    start_relay: StartRelay,
) -> None:
    server, events, _ = await start_relay(None, max_connections=1)
    _, slow_writer = await raw_client(server.port)  # holds the only handshake slot
    await asyncio.sleep(0.05)
    reader, writer = await raw_client(server.port)
    writer.write(greeting_auth())
    assert await read_to_eof(reader, timeout=2) == b""
    writer.close()
    slow_writer.close()
    await events.wait_for("rejected", 2)
    assert events.outcomes()[0] == "too_many_handshakes"


async def test_many_concurrent_relays(start_relay: StartRelay) -> None:
    server, events, _ = await start_relay()

    async def one(i: int) -> bytes:
        reader, writer = await socks_connect(server.port, VIRTUAL, 143)
        line = b"a%03d NOOP\r\n" % i
        writer.write(line)
        async with asyncio.timeout(10):
            got = await reader.readexactly(len(line))
        writer.close()
        return got

    results = await asyncio.gather(*(one(i) for i in range(50)))
    assert results == [b"a%03d NOOP\r\n" % i for i in range(50)]
    await events.wait_for("closed", 50)


async def test_client_reset_mid_transfer_closes_the_back_end(start_relay: StartRelay) -> None:
    backend_done = asyncio.get_running_loop().create_future()

    async def firehose(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            backend_done.set_result(type(exc).__name__)
            raise

    server, events, _ = await start_relay(firehose)
    reader, writer = await socks_connect(server.port, VIRTUAL, 143)
    async with asyncio.timeout(5):
        await reader.readexactly(1_000_000)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST instead of FIN
    async with asyncio.timeout(5):
        assert await backend_done in ("ConnectionResetError", "BrokenPipeError")
    await events.wait_for("closed")
    [closed] = events.named("closed")
    # The reset is seen as an error, or as the client's EOF when the other direction's
    # failed write consumed the socket error first.
    assert closed["closed_by"] == "client" or closed["closed_by"].startswith("error: ")
    assert closed["bytes_down"] >= 1_000_000
    # The server goes on serving.
    _, other = await socks_connect(server.port, VIRTUAL, 143)
    other.transport.abort()
