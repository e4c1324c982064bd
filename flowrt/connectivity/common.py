"""What every protocol's connectivity test shares: route, connect, TLS and chain stages."""

from __future__ import annotations

import socket
import ssl
import time

from cryptography import x509

from flowrt.connectivity.chain import CertInfo, mark_trust, peer_chain
from flowrt.connectivity.report import ConnectivityReport
from flowrt.connectivity.target import CheckOptions
from flowrt.dsl.model import Pos, Proxy, Template
from flowrt.errors import FlowrtError, MessagingException, SSLHandshakeException
from flowrt.net import ProxyRoute, connect, resolve_route, tls_failure
from flowrt.security import TenantSecurity

NAMES = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3"}


class TlsFailed(Exception):
    """Raised by a session when the handshake failed, to fetch the chain and explain it."""

    def __init__(self, cause: ssl.SSLError | ConnectionError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def route_for(opts: CheckOptions, security: TenantSecurity) -> ProxyRoute | None:
    if opts.location is None:
        return None
    proxy = Proxy("on-premise", Template((opts.location,), opts.location, Pos("-", 1, 1)))
    return resolve_route(proxy, locations=security.locations(), credentials=security.credentials())


def connect_failure(opts: CheckOptions, exc: FlowrtError) -> MessagingException:
    error = MessagingException(
        f"Could not connect to {NAMES[opts.protocol]} host: {opts.host}, port: {opts.port}"
    )
    error.__cause__ = exc
    return error


async def connect_stage(
    report: ConnectivityReport, opts: CheckOptions, route: ProxyRoute | None
) -> socket.socket:
    started = time.perf_counter()
    try:
        sock = await connect(opts.host, opts.port, route=route, timeout=opts.timeout)
    except FlowrtError as exc:
        error = connect_failure(opts, exc)
        report.fail("connect", error)
        raise error from exc
    how = route.describe() if route else "direct"
    elapsed = (time.perf_counter() - started) * 1000
    report.stage("connect", f"{opts.host}:{opts.port} ({how}) in {elapsed:.1f} ms")
    return sock


def tls_stage(
    report: ConnectivityReport, ssl_object: ssl.SSLObject | None, security: TenantSecurity
) -> None:
    if ssl_object is None:
        return
    version, cipher = ssl_object.version(), ssl_object.cipher()
    report.stage("tls", f"{version} {cipher[0] if cipher else ''}".strip())
    chain_stage(report, peer_chain(ssl_object), security)


def chain_stage(
    report: ConnectivityReport,
    chain: list[x509.Certificate],
    security: TenantSecurity,
    *,
    ok: bool = True,
) -> list[CertInfo]:
    infos = mark_trust(chain, security.keystore())
    report.chain = infos
    details = [line for i, info in enumerate(infos) for line in info.lines(i)]
    report.stage("certificate", f"chain of {len(infos)}", details, ok=ok)
    return infos


async def explain_tls(
    report: ConnectivityReport,
    opts: CheckOptions,
    failed: TlsFailed,
    chain: list[x509.Certificate],
    security: TenantSecurity,
) -> MessagingException:
    """The chain fetched without validation, shown; the failure as a chain with a hint."""
    if chain:
        chain_stage(report, chain, security, ok=False)
    cause: SSLHandshakeException = tls_failure(
        failed.cause,
        host=opts.host,
        port=opts.port,
        peer=chain[0] if chain else None,
        fix_command=opts.fix_command,
    )
    cause.__cause__ = failed.cause  # kept for logs; the rendered chain stops at the IOException
    error = connect_failure(opts, cause)
    report.fail("tls", error)
    return error
