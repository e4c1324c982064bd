"""Serving the monitor: the address rules, the listening socket, TLS and uvicorn.

The socket is bound here, before uvicorn starts, so that a busy or wrong address is a clear
error with exit code 2 (uvicorn itself would log and ``sys.exit``). uvicorn's own signal
handling is switched off: inside ``flowrt run`` the runtime owns SIGTERM and stops the
server as part of its graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from flowrt._fs import atomic_write
from flowrt.errors import TenantError, UsageError
from flowrt.monitor.auth import load_token_hash
from flowrt.tenant import Tenant

__all__ = [
    "DEFAULT_ADDRESS",
    "MonitorServer",
    "MonitorSettings",
    "is_loopback",
    "parse_address",
]

DEFAULT_ADDRESS = "127.0.0.1:8470"
SETTINGS_FILE = "monitor.json"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; UsageError naming the value otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(
            f"--http: {text!r} is not HOST:PORT",
            hint=f"for example {DEFAULT_ADDRESS} (loopback) or 0.0.0.0:8470 with a token",
        )
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name may resolve to anything: treated as reachable from outside


class MonitorSettings:
    """The tenant's monitor settings (``monitor.json``): the address ``flowrt run`` serves
    the monitor on when ``--http`` is not given, and the keystore alias for HTTPS."""

    def __init__(self, http: str | None = None, tls_alias: str | None = None) -> None:
        self.http = http
        self.tls_alias = tls_alias

    @staticmethod
    def path(tenant: Tenant) -> Path:
        return tenant.root / SETTINGS_FILE

    @classmethod
    def load(cls, tenant: Tenant) -> MonitorSettings:
        path = cls.path(tenant)
        try:
            data: Any = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise TenantError(f"cannot read the monitor settings {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise TenantError(f"the monitor settings {path} are not a JSON object")
        http, alias = data.get("http"), data.get("tls_alias")
        return cls(
            http=http if isinstance(http, str) else None,
            tls_alias=alias if isinstance(alias, str) else None,
        )

    def save(self, tenant: Tenant) -> None:
        if self.http is not None:
            parse_address(self.http)
        data = {"http": self.http, "tls_alias": self.tls_alias}
        atomic_write(self.path(tenant), json.dumps(data, indent=2).encode("utf-8"), mode=0o644)


def check_access(tenant: Tenant, host: str, address: str) -> None:
    """Refuse an address beyond loopback while the tenant has no monitor token."""
    if not is_loopback(host) and load_token_hash(tenant) is None:
        raise UsageError(
            f"refusing to serve the monitor on {address} without a token: "
            "anyone who can reach it could read the message log",
            hint="create a token with `flowrt monitor token`, or use a loopback address "
            f"such as {DEFAULT_ADDRESS}",
        )


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets, and
        # without it a response written in two parts waits 40 ms for a delayed ACK
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    except OSError as exc:
        raise UsageError(f"--http: cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another process may use the port; pick another one",
        ) from exc
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller owns the signals (see the module docstring)


class MonitorServer:
    """The monitor on one bound socket; :meth:`serve` until :meth:`stop`."""

    def __init__(
        self,
        app: Starlette,
        address: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        host, port = parse_address(address)
        self.loopback = is_loopback(host)
        self._sock = bind(host, port)
        self.port = int(self._sock.getsockname()[1])
        self.host = host
        self.scheme = "https" if ssl_context is not None else "http"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        config.load()
        config.ssl = ssl_context  # a context built from the keystore, not from files
        self._server = _Server(config)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._sock.close()

    def stop(self) -> None:
        self._server.should_exit = True

    async def started(self) -> None:
        while not self._server.started:
            await asyncio.sleep(0.01)


def monitor_server(
    tenant: Tenant,
    address: str,
    *,
    tls_alias: str | None = None,
    live_states: Callable[[], dict[str, str]] | None = None,
    runtime_up: Callable[[], bool] | None = None,
) -> MonitorServer:
    """The monitor of ``tenant`` bound to ``address`` (not yet serving). With ``live_states``
    it is the monitor of the runtime in this process; without, the standalone one."""
    from flowrt.monitor.app import MonitorConfig, create_app
    from flowrt.security.keystore import Keystore
    from flowrt.security.tls import server_context

    host, _ = parse_address(address)
    check_access(tenant, host, address)
    context = None if tls_alias is None else server_context(Keystore.open(tenant), tls_alias)
    config = MonitorConfig(
        tenant,
        live_states=live_states,
        runtime_up=runtime_up,
        token_always=not is_loopback(host),
    )
    return MonitorServer(create_app(config), address, ssl_context=context)
