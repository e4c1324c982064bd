"""Open a TCP connection, directly or through SOCKS5, and say in the chain's words why not."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy

from flowrt.errors import (
    ConnectException,
    IOException,
    SocketTimeoutException,
    SocksException,
    UnknownHostException,
)
from flowrt.net.route import ProxyRoute

# RFC 1928 reply texts, as operators know them from the platform and from Dante
SOCKS_REPLIES = {
    0x01: "General SOCKS server failure",
    0x02: "Connection not allowed by ruleset",
    0x03: "Network unreachable",
    0x04: "Host unreachable",
    0x05: "Connection refused",
    0x06: "TTL expired",
    0x07: "Command not supported",
    0x08: "Address type not supported",
}


async def connect(
    host: str, port: int, *, route: ProxyRoute | None, timeout: float
) -> socket.socket:
    """A connected, non-blocking socket to host:port, or an IOException with a hint."""
    if route is None:
        return await _direct(host, port, timeout)
    return await _through_socks(host, port, route, timeout)


async def open_stream(
    host: str,
    port: int,
    *,
    route: ProxyRoute | None,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    limit: int = 2**20,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over :func:`connect`; with ``tls`` the handshake (implicit TLS) is done too.

    A failed handshake raises the ``ssl`` exception unchanged: only the adapter knows how to
    fetch the peer's certificate for :func:`flowrt.net.tls_failure`.
    """
    sock = await connect(host, port, route=route, timeout=timeout)
    try:
        return await asyncio.open_connection(
            sock=sock,
            ssl=tls,
            server_hostname=host if tls else None,
            ssl_handshake_timeout=timeout if tls else None,
            limit=limit,
        )
    except BaseException:
        sock.close()
        raise


async def _direct(host: str, port: int, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnknownHostException(
            f"{host}: {exc.strerror or 'name does not resolve'}",
            hint=f"check the host name {host!r}; it does not resolve from this machine",
        ) from exc
    except TimeoutError as exc:
        raise SocketTimeoutException(f"resolving {host} timed out after {timeout:g}s") from exc
    last: OSError | None = None
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except TimeoutError as exc:
            sock.close()
            raise SocketTimeoutException(
                f"connect timed out after {timeout:g}s",
                hint=f"nothing answers on {host}:{port}; a firewall may drop the packets",
            ) from exc
        except OSError as exc:
            sock.close()
            last = exc
    assert last is not None
    raise _connect_error(last, host, port) from last


def _connect_error(exc: OSError, host: str, port: int) -> IOException:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return ConnectException(
            "Connection refused",
            hint=f"nothing listens on {host}:{port}; check the port and that the server runs",
        )
    return ConnectException(exc.strerror or str(exc), hint=f"{host}:{port} cannot be reached")


async def _through_socks(host: str, port: int, route: ProxyRoute, timeout: float) -> socket.socket:
    proxy = Proxy(
        ProxyType.SOCKS5, route.host, route.port, route.username, route.password, rdns=True
    )
    try:
        sock = await proxy.connect(host, port, timeout=timeout)
    except ProxyTimeoutError as exc:
        raise SocketTimeoutException(
            f"no answer from the SOCKS5 proxy {route.host}:{route.port} within {timeout:g}s",
            hint=_proxy_down_hint(route),
        ) from exc
    except ProxyConnectionError as exc:
        raise ConnectException(
            f"Couldn't connect to the SOCKS5 proxy {route.host}:{route.port}: "
            f"{exc.strerror or exc}",
            hint=_proxy_down_hint(route),
        ) from exc
    except ProxyError as exc:
        raise _socks_error(exc, host, port, route) from exc
    except TimeoutError as exc:
        raise SocketTimeoutException(f"SOCKS5 connect timed out after {timeout:g}s") from exc
    sock.setblocking(False)
    return sock


def _proxy_down_hint(route: ProxyRoute) -> str:
    if route.location:
        return (
            f"is the connector for location {route.location} running at "
            f"{route.host}:{route.port}? (`flowrt connector run`; `flowrt locations list`)"
        )
    return f"is the SOCKS5 proxy at {route.host}:{route.port} running?"


def _socks_error(exc: ProxyError, host: str, port: int, route: ProxyRoute) -> SocksException:
    code = exc.error_code
    target = f"{host}:{port}"
    where = f"location {route.location}" if route.location else "the proxy"
    if code is None:
        text = str(exc)
        if "authentication" in text.lower():
            return SocksException(
                "SOCKS authentication failed", hint=_auth_hint(route), retryable=False
            )
        return SocksException(text, hint=f"{where} answered with a SOCKS5 protocol error")
    text = SOCKS_REPLIES.get(code, f"SOCKS5 reply {code:#04x}")
    hints = {
        0x01: (
            f"the connector for location {route.location} could not complete the connection "
            f"to {target}; `flowrt connector check` on the connector host shows why (a tcp-tls "
            "back end whose certificate its truststore does not trust, a TLS handshake "
            "failure, or max_connections reached)"
            if route.location
            else f"the proxy could not complete the connection to {target}; its log says why"
        ),
        0x02: (
            f"add a mapping for {target} in {where}"
            if route.location
            else f"the proxy's rules do not allow {target}"
        ),
        0x03: _location_hint(route),
        0x04: (
            f"the mapping for {target} exists, but the connector cannot reach the "
            "internal host; check that it is up (`flowrt connector check`)"
        ),
        0x05: (
            f"the internal server behind {target} refused the connection; is the mail "
            "server running on the mapped host and port?"
        ),
    }
    retryable = code in (0x01, 0x04, 0x05, 0x06)
    return SocksException(text, reply_code=code, hint=hints.get(code), retryable=retryable)


def _location_hint(route: ProxyRoute) -> str:
    """Reply 0x03 from a connector: it serves another location ID than the one asked for."""
    connector = f"the connector at {route.host}:{route.port}"
    if route.location and route.username and route.username != route.location:
        name = f"credential '{route.credential}'" if route.credential else "the credential"
        return (
            f"{connector} does not serve location ID {route.username!r}, the user of {name}; "
            f"the user must be the location ID {route.location!r}"
        )
    return (
        f"{connector} does not serve location ID {route.location!r}; the location ID in the "
        "flow and in `flowrt locations list` must be the connector's location_id"
    )


def _auth_hint(route: ProxyRoute) -> str:
    """Why a connector refuses the login: user = location ID, password = its access token."""
    location, credential = route.location, route.credential
    if not location:
        return "the proxy refused the user name and password"
    if route.password is None:
        return (
            f"location {location} has no access token; give it a credential whose user is "
            f"{location} and whose password is the connector's token (`flowrt locations add "
            f"{location} --proxy {route.host}:{route.port} --credential NAME --replace`)"
        )
    name = f"credential '{credential}'" if credential else "the location's credential"
    if route.username != location:
        return (
            f"the connector for location {location} refused the login: the user of {name} is "
            f"{route.username!r}, but it must be the location ID {location!r}"
        )
    fix = (
        f" (`flowrt credentials add {credential} --user {location} --password-stdin --replace`)"
        if credential
        else ""
    )
    return (
        f"the connector for location {location} refused the access token: the password of "
        f"{name} must be the connector's token{fix}"
    )
