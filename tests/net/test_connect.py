"""The connection layer: direct and SOCKS5 connects, and failures mapped with hints."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme
from cryptography import x509

from flowrt.errors import (
    ConnectException,
    SocketTimeoutException,
    SocksException,
    SSLHandshakeException,
    UnknownHostException,
    is_retryable,
    render_chain,
)
from flowrt.net import ProxyRoute, connect, open_stream, tls_failure

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"hello\r\n")
        await writer.drain()
        writer.close()
    except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
        pass  # a client that gave up during the handshake


async def test_direct_connect_reads_the_greeting() -> None:
    server = await serve(greet)
    async with server:
        reader, writer = await open_stream("127.0.0.1", port_of(server), route=None, timeout=5)
        assert await reader.readline() == b"hello\r\n"
        writer.close()


async def test_refused_port_is_a_connect_exception_with_a_hint() -> None:
    port = closed_port()
    with pytest.raises(ConnectException) as info:
        await connect("127.0.0.1", port, route=None, timeout=5)
    assert info.value.message == "Connection refused"
    assert f"127.0.0.1:{port}" in (info.value.hint or "")
    assert is_retryable(info.value)


async def test_unknown_host() -> None:
    with pytest.raises(UnknownHostException) as info:
        await connect("no-such-host.invalid", 25, route=None, timeout=5)
    assert "no-such-host.invalid" in info.value.message


@pytest.fixture
async def silent_socks() -> AsyncIterator[int]:
    """A 'proxy' that accepts and never answers: the client must give up by itself."""
    clients: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.append(writer)
        await reader.read()

    server = await serve(hold)
    async with server:
        yield port_of(server)
        for writer in clients:
            writer.close()


async def test_silent_proxy_times_out(silent_socks: int) -> None:
    route = ProxyRoute("127.0.0.1", silent_socks, "plant-1", "token", "plant-1")
    with pytest.raises(SocketTimeoutException) as info:
        await connect("mail.plant.example", 143, route=route, timeout=0.3)
    assert "location plant-1" in (info.value.hint or "")


async def test_proxy_not_running_names_the_location() -> None:
    route = ProxyRoute("127.0.0.1", closed_port(), "plant-1", "token", "plant-1")
    with pytest.raises(ConnectException) as info:
        await connect("mail.plant.example", 143, route=route, timeout=5)
    assert "SOCKS5 proxy" in info.value.message
    assert "connector for location plant-1" in (info.value.hint or "")


def socks_replying(code: int) -> Handler:
    """A minimal SOCKS5 server that authenticates anyone and answers CONNECT with ``code``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])
        writer.write(b"\x05\x02")  # username/password
        ver_ulen = await reader.readexactly(2)
        await reader.readexactly(ver_ulen[1])
        plen = await reader.readexactly(1)
        await reader.readexactly(plen[0])
        writer.write(b"\x01\x00")
        request = await reader.readexactly(4)
        if request[3] == 3:
            size = await reader.readexactly(1)
            await reader.readexactly(size[0] + 2)
        writer.write(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
        await writer.drain()
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("code", "text", "hint_part", "retryable"),
    [
        (
            0x02,
            "Connection not allowed by ruleset",
            "add a mapping for mail.plant.example:143 in location plant-1",
            False,
        ),
        (0x03, "Network unreachable", "does not serve location ID 'plant-1'", False),
        (0x04, "Host unreachable", "cannot reach the internal host", True),
        (0x05, "Connection refused", "refused the connection", True),
    ],
)
async def test_socks_reply_codes_keep_their_texts_and_get_hints(
    code: int, text: str, hint_part: str, retryable: bool
) -> None:
    server = await serve(socks_replying(code))
    async with server:
        route = ProxyRoute("127.0.0.1", port_of(server), "plant-1", "token", "plant-1")
        with pytest.raises(SocksException) as info:
            await connect("mail.plant.example", 143, route=route, timeout=5)
    assert info.value.message == text
    assert info.value.reply_code == code
    assert hint_part in (info.value.hint or "")
    assert info.value.retryable is retryable
    assert text in render_chain(info.value)


def test_route_repr_hides_the_token() -> None:
    route = ProxyRoute("127.0.0.1", 1080, "plant-1", "s3cr3t-token", "plant-1")
    assert "s3cr3t-token" not in repr(route)


# ------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="flowrt test")


async def tls_error(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str
) -> tuple[ssl.SSLError, x509.Certificate]:
    server = await serve(greet, tls=server_ctx)
    async with server:
        port = port_of(server)
        with pytest.raises(ssl.SSLError) as info:
            sock = await connect("127.0.0.1", port, route=None, timeout=5)
            await asyncio.open_connection(sock=sock, ssl=client_ctx, server_hostname=host)
        # what an adapter does to explain it: fetch the certificate without validation
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        _, writer = await open_stream("127.0.0.1", port, route=None, timeout=5, tls=probe)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
    return info.value, x509.load_der_x509_certificate(der)


def client_trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.cert_pem.bytes().decode())
    return ctx


def server_with(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


async def test_untrusted_root_names_the_issuer_and_the_import_command(ca: trustme.CA) -> None:
    other = trustme.CA()
    exc, peer = await tls_error(
        server_with(ca.issue_cert("localhost")), client_trusting(other), "localhost"
    )
    failure = tls_failure(
        exc,
        host="localhost",
        port=465,
        peer=peer,
        fix_command="flowrt test smtp localhost:465 --protection smtps --import",
    )
    assert isinstance(failure, SSLHandshakeException)
    assert failure.message.startswith("PKIX path building failed")
    issuer = peer.issuer.rfc4514_string()
    assert f"issued by {issuer}" in failure.message
    assert f"the tenant keystore has no certificate for {issuer}" in (failure.hint or "")
    assert "--import" in (failure.hint or "")
    assert not failure.retryable


async def test_hostname_mismatch_lists_the_certificate_names(ca: trustme.CA) -> None:
    exc, peer = await tls_error(
        server_with(ca.issue_cert("mail.other.example")), client_trusting(ca), "localhost"
    )
    failure = tls_failure(exc, host="localhost", port=993, peer=peer, fix_command="x")
    assert "No subject alternative names matching localhost" in failure.message
    assert "mail.other.example" in (failure.hint or "")


async def test_expired_certificate(ca: trustme.CA) -> None:
    expired = ca.issue_cert(
        "localhost",
        not_after=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_before=dt.datetime(2019, 1, 1, tzinfo=dt.UTC),
    )
    exc, peer = await tls_error(server_with(expired), client_trusting(ca), "localhost")
    failure = tls_failure(exc, host="localhost", port=993, peer=peer, fix_command="x")
    assert failure.message == "certificate expired on 2020-01-01 00:00 UTC"


async def test_plain_port_with_implicit_tls() -> None:
    server = await serve(greet)
    async with server:
        with pytest.raises(ssl.SSLError) as info:
            await open_stream(
                "127.0.0.1",
                port_of(server),
                route=None,
                timeout=5,
                tls=ssl.create_default_context(),
            )
    failure = tls_failure(info.value, host="127.0.0.1", port=1, peer=None, fix_command="x")
    assert "STARTTLS" in (failure.hint or "") or "handshake" in failure.message


def test_library_causes_stay_attached_but_are_not_repeated_in_the_chain() -> None:
    from flowrt.errors import MailConnectException, StepException, chain_levels

    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 25)")
        except OSError as low:
            try:
                raise ConnectException("Connection refused") from low
            except ConnectException as mapped:
                raise MailConnectException("Couldn't connect to host, port: h, 25") from mapped
    except MailConnectException as exc:
        assert [lv.type for lv in chain_levels(exc)] == ["MailConnectException", "ConnectException"]
        assert isinstance(exc.__cause__.__cause__, ConnectionRefusedError)  # kept for logs
    try:
        try:
            raise ValueError("bad customer number")
        except ValueError as own:
            raise StepException("script transforms:enrich failed (line 23)") from own
    except StepException as exc:
        assert [lv.type for lv in chain_levels(exc)] == ["StepException", "ValueError"]


async def test_ip_address_mismatch_is_explained_like_a_name_mismatch(ca: trustme.CA) -> None:
    server = server_with(ca.issue_cert("mail.other.example"))
    client = client_trusting(ca)
    exc, peer = await tls_error(server, client, "127.0.0.1")
    failure = tls_failure(exc, host="127.0.0.1", port=993, peer=peer, fix_command="x")
    assert "No subject alternative names matching 127.0.0.1" in failure.message
    assert "mail.other.example" in (failure.hint or "")
