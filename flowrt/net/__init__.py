"""The connection layer that every adapter shares: direct or through a SOCKS5 proxy (the
on-premise connector), with failures mapped to the chain's cause types and hints.

    sock = await connect(host, port, route=route, timeout=30)   # a connected socket
    reader, writer = await open_stream(host, port, route=route, timeout=30, tls=ctx)

TLS contexts come from the tenant keystore (:mod:`flowrt.security.tls`); this layer only
uses them and explains their failures (:func:`tls_failure`).
"""

from flowrt.net.connect import connect, open_stream
from flowrt.net.route import ProxyRoute, resolve_route
from flowrt.net.tls_errors import describe_certificate, tls_failure
from flowrt.net.tls_probe import speaks_tls_at_once

__all__ = [
    "ProxyRoute",
    "connect",
    "describe_certificate",
    "open_stream",
    "resolve_route",
    "speaks_tls_at_once",
    "tls_failure",
]
