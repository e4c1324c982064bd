"""Which way a connection goes: straight out, or through the SOCKS5 proxy of a location."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from flowrt.adapters.mail.model import Proxy
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_template
from flowrt.errors import SocksException


@dataclasses.dataclass(frozen=True)
class ProxyRoute:
    """A SOCKS5 hop. For an on-premise location the user is the location ID and the password
    its access token; ``location`` and ``credential`` (the name of the location's credential)
    are for errors and hints."""

    host: str
    port: int
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    location: str | None = None
    credential: str | None = None

    def describe(self) -> str:
        where = f"{self.host}:{self.port}"
        return f"location {self.location} via {where}" if self.location else f"SOCKS5 {where}"


class _Location(Protocol):
    proxy_host: str
    proxy_port: int
    credential: str | None


class _Locations(Protocol):
    def __contains__(self, location_id: object) -> bool: ...
    def get(self, location_id: str) -> Any: ...


class _Credentials(Protocol):
    def get(self, name: str) -> Any: ...


def resolve_route(
    proxy: Proxy,
    *,
    locations: _Locations | None,
    credentials: _Credentials | None,
    exchange: Exchange | None = None,
) -> ProxyRoute | None:
    """The route for a flow's ``proxy`` setting; None for ``internet``.

    The location may be an expression (evaluated on ``exchange``). An unknown location is a
    SocksException that says how to register it; it cannot heal by retrying.
    """
    if proxy.type == "internet" or proxy.location is None:
        return None
    location_id = compile_template(proxy.location)(exchange or Exchange())
    if locations is None or location_id not in locations:
        raise SocksException(
            f"unknown location ID {location_id!r}: it is not registered in this tenant",
            hint=f"register it with `flowrt locations add {location_id} --proxy HOST:PORT "
            "--credential NAME`",
            retryable=False,
        )
    location: _Location = locations.get(location_id)
    username: str | None = location_id
    password: str | None = None
    if location.credential and credentials is not None:
        credential = credentials.get(location.credential)
        username, password = _user_and_secret(credential, location_id)
    return ProxyRoute(
        location.proxy_host,
        location.proxy_port,
        username,
        password,
        location_id,
        location.credential,
    )


def _user_and_secret(credential: Any, location_id: str) -> tuple[str, str | None]:
    """A `user` credential gives both; a `secure-parameter` is the token for the location."""
    secret = getattr(credential, "password", None) or getattr(credential, "value", None)
    user = getattr(credential, "user", None) or location_id
    if secret is None:
        return str(user), None
    return str(user), str(secret.reveal() if hasattr(secret, "reveal") else secret)
