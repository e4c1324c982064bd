"""An httpx transport whose connections come from :mod:`flowrt.net`.

Token requests then take the same way as the mail connection they are for: direct, or through
the on-premise connector (SOCKS5 with the location ID) when the flow says ``proxy
on-premise``, with the same timeouts and the same chain causes (ConnectException,
UnknownHostException, SocksException). TLS trust is the ssl context given (the tenant
keystore); httpcore does the handshake through :meth:`_Stream.start_tls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from flowrt.net import ProxyRoute, connect


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no answer within {timeout:g}s") from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._writer.write(buffer)
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send within {timeout:g}s") from None

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # A failed handshake leaves as the ssl error itself: the caller explains it with
        # flowrt.net.tls_failure, as for mail servers.
        await self._writer.start_tls(
            ssl_context, server_hostname=server_hostname, ssl_handshake_timeout=timeout
        )
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info in ("client_addr", "server_addr"):
            return self._writer.get_extra_info("sockname" if info == "client_addr" else "peername")
        if info == "is_readable":
            return self._reader.at_eof()
        return None


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self, route: ProxyRoute | None, timeout: float) -> None:
        self._route = route
        self._timeout = timeout

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        sock = await connect(host, port, route=self._route, timeout=timeout or self._timeout)
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("token endpoints are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RoutedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` over :func:`flowrt.net.connect` (direct or SOCKS5)."""

    def __init__(self, *, tls: ssl.SSLContext, route: ProxyRoute | None, timeout: float) -> None:
        super().__init__(verify=tls, trust_env=False)
        # httpx has no public hook for a network backend; its pool is the documented
        # httpcore one, built here the way httpx builds it, with our backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls,
            max_connections=4,
            network_backend=_Backend(route, timeout),
        )
