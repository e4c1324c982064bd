"""Helpers for the connector tests: TOML writing, log capture, loopback back ends, clients.

Everything listens on 127.0.0.1 (or ::1) on ports the kernel picks; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from python_socks.async_.asyncio import Proxy

from flowrt.connector import ConnectorConfig, ConnectorServer

LOCATION = "plant-1"
TOKEN = "plant-1-test-token-0123456789abcdef"
TOKEN_ENV = "FLOWRT_CONNECTOR_TOKEN"
TIMEOUT = 10.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no TOML for {value!r}")


def toml_text(
    top: dict[str, Any],
    mappings: list[dict[str, Any]],
    tls: dict[str, Any] | None = None,
) -> str:
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    if tls is not None:
        lines.append("[tls]")
        lines += [f"{key} = {toml_value(value)}" for key, value in tls.items()]
    for mapping in mappings:
        lines.append("[[mapping]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in mapping.items()]
    return "\n".join(lines) + "\n"


def tcp(virtual: str, internal: str, **extra: Any) -> dict[str, Any]:
    return {"virtual": virtual, "internal": internal, "protocol": "tcp", **extra}


def tcp_tls(virtual: str, internal: str, **extra: Any) -> dict[str, Any]:
    return {"virtual": virtual, "internal": internal, "protocol": "tcp-tls", **extra}


WriteConfig = Callable[..., Path]
MakeConfig = Callable[..., ConnectorConfig]


class Events(list[dict[str, Any]]):
    """The connector's log events, as dicts."""

    def outcomes(self) -> list[str]:
        return [e["outcome"] for e in self if "outcome" in e]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self if e["event"] == event]

    async def wait_for(self, event: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while len(self.named(event)) < count:
                await asyncio.sleep(0.01)


StartConnector = Callable[[ConnectorConfig], Awaitable[tuple[ConnectorServer, Events]]]


# -- back ends ----------------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close: the client's EOF comes back as an EOF."""
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def digest_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read until EOF, then answer the SHA-256 of what came: needs the half-close relayed."""
    digest = hashlib.sha256()
    while data := await reader.read(256 * 1024):
        digest.update(data)
    writer.write(digest.hexdigest().encode() + b"\n")
    await writer.drain()
    writer.close()


class Backends:
    """Loopback TCP (or TLS) servers, closed at the end of the test."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(
        self,
        handler: Handler = echo_handler,
        *,
        host: str = "127.0.0.1",
        ssl_context: Any = None,
    ) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, OSError, asyncio.CancelledError):
                # Not re-raised: Python 3.11 logs an error for a cancelled client task.
                writer.transport.abort()
            finally:
                self.tasks.discard(task)

        server = await asyncio.start_server(tracked, host, 0, ssl=ssl_context)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on (bound, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ipv6_available() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return True
    return False


# -- clients ------------------------------------------------------------------------------


async def socks_connect(
    proxy_port: int,
    host: str,
    port: int,
    *,
    user: str = LOCATION,
    token: str = TOKEN,
    proxy_host: str = "127.0.0.1",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT through the connector with python-socks; raises its ProxyError on refusal."""
    shown = f"[{proxy_host}]" if ":" in proxy_host else proxy_host
    proxy = Proxy.from_url(f"socks5://{user}:{token}@{shown}:{proxy_port}", rdns=True)
    sock = await proxy.connect(host, port, timeout=TIMEOUT)
    return await asyncio.open_connection(sock=sock, limit=256 * 1024)


async def raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read()


def greeting_auth(user: str = LOCATION, token: str = TOKEN) -> bytes:
    """Greeting offering username/password, and the RFC 1929 message."""
    u, p = user.encode(), token.encode()
    return bytes([5, 1, 2]) + bytes([1, len(u)]) + u + bytes([len(p)]) + p


def connect_request(host: str, port: int, command: int = 1) -> bytes:
    raw = host.encode()
    return bytes([5, command, 0, 3, len(raw)]) + raw + port.to_bytes(2, "big")
