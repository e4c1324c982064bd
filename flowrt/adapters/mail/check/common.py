"""What every protocol's connectivity test shares: route, connect, TLS and chain stages, the
second connection that fetches the chain when validation failed, and the rules a flow follows
(STARTTLS mandatory means mandatory, no plain password over a clear link). IMAP and POP3
also share the frame of their check (the login first), the start of their client and their
STARTTLS (STLS) stage."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

from cryptography import x509

from flowrt.adapters.mail.check.target import CheckOptions
from flowrt.adapters.mail.model import Proxy
from flowrt.adapters.mail.sender.client import StartClient
from flowrt.adapters.mail.sender.endpoint import MailEndpoint, MailLogin
from flowrt.adapters.mail.sender.errors import explain_silent_greeting, timed_out
from flowrt.connectivity.chain import CertInfo, mark_trust, peer_chain
from flowrt.connectivity.report import ConnectivityReport
from flowrt.dsl.model import Pos, Template
from flowrt.errors import (
    CredentialError,
    FlowrtError,
    IOException,
    MessagingException,
    SocketTimeoutException,
    SSLHandshakeException,
    StoreClosedException,
    UsageError,
)
from flowrt.net import ProxyRoute, connect, resolve_route, tls_failure
from flowrt.security import (
    OAuth2ClientCredentials,
    OAuth2RefreshToken,
    TenantSecurity,
    unverified_context,
)

NAMES = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3"}
IMPLICIT_TLS = {"smtp": "smtps", "imap": "imaps", "pop3": "pop3s"}

Session = Callable[[ssl.SSLContext, ProxyRoute | None], Awaitable[None]]
"""One test session: with the TLS context to use and the route; raises TlsFailed."""
ChainFetch = Callable[[ProxyRoute | None], Awaitable[list[x509.Certificate]]]
"""A second session without validation, only to read the server's chain."""
MailSession = Callable[
    [
        CheckOptions,
        ssl.SSLContext,
        ProxyRoute | None,
        TenantSecurity,
        ConnectivityReport,
        MailLogin | None,
    ],
    Awaitable[None],
]
"""An IMAP or POP3 test session: a :data:`Session` with the login of ``--credential``."""
MailChainFetch = Callable[[CheckOptions, ProxyRoute | None], Awaitable[list[x509.Certificate]]]

C = TypeVar("C")


class TlsFailed(Exception):
    """Raised by a session when the handshake failed, to fetch the chain and explain it."""

    def __init__(self, cause: ssl.SSLError | ConnectionError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error inside ``exc`` (a library's wrapper around a failed handshake), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


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


async def run_check(
    opts: CheckOptions,
    security: TenantSecurity,
    report: ConnectivityReport,
    session: Session,
    unverified_chain: ChainFetch,
) -> None:
    """Run ``session`` with the keystore's TLS context (any chain with ``--no-validate``).
    When the handshake fails, a second connection without validation reads the server's
    chain, which is shown (marked against the keystore) and named in the error."""
    try:
        route = route_for(opts, security)
    except FlowrtError as exc:  # an unknown location ID
        error = connect_failure(opts, exc)
        report.fail("connect", error)
        raise error from exc
    context = security.client_context() if opts.validate else unverified_context()
    try:
        await session(context, route)
    except TlsFailed as failed:
        chain = await fetch_chain(opts, unverified_chain, route)
        error = await explain_tls(report, opts, failed, chain, security)
        raise error from error.__cause__
    except (OSError, EOFError) as exc:  # a library let a wire error through unmapped
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        cause = IOException(f"connection lost: {reason}")
        cause.__cause__ = exc  # kept for logs; the rendered chain stops at the IOException
        error = connect_failure(opts, cause)
        if report.error is None:
            report.fail(report.stages[-1].name if report.stages else "connect", error)
        raise error from cause


async def check_mailbox_server(
    opts: CheckOptions,
    security: TenantSecurity,
    report: ConnectivityReport,
    session: MailSession,
    unverified_chain: MailChainFetch,
) -> None:
    """An IMAP or POP3 check: the login of ``--credential`` first (unless ``--auth none``),
    then :func:`run_check` with the protocol's ``session`` and ``unverified_chain``."""
    login: MailLogin | None = None
    if opts.auth != "none":
        with failing(report, "credential"):
            login = mail_login(opts, security)

    async def with_login(context: ssl.SSLContext, route: ProxyRoute | None) -> None:
        await session(opts, context, route, security, report, login)

    async def chain(route: ProxyRoute | None) -> list[x509.Certificate]:
        return await unverified_chain(opts, route)

    await run_check(opts, security, report, with_login, chain)


async def start_client(
    start: StartClient[C],
    opts: CheckOptions,
    sock: socket.socket,
    tls: ssl.SSLContext | None,
    route: ProxyRoute | None = None,
) -> C:
    """The client ``start`` gives over ``sock`` (implicit TLS first with ``tls``), greeting
    read; a failed handshake is TlsFailed, a dropped connection IOException."""
    try:
        return await start(sock, host=opts.host, port=opts.port, timeout=opts.timeout, tls=tls)
    except (ssl.SSLError, ConnectionResetError) as exc:
        if tls is None:
            raise IOException(f"connection dropped: {exc}") from exc
        raise TlsFailed(exc) from exc
    except OSError as exc:  # reset or aborted before anything was said
        raise IOException(f"connection lost: {exc}") from exc
    except FlowrtError as exc:
        if timed_out(exc):  # the hint lands on the level that `failing` wraps
            await explain_silent_greeting(
                exc,
                protocol=opts.protocol,
                host=opts.host,
                port=opts.port,
                protection=opts.protection,
                timeout=opts.timeout,
                route=route,
            )
        raise


async def fetch_chain(
    opts: CheckOptions, fetch: ChainFetch, route: ProxyRoute | None
) -> list[x509.Certificate]:
    """The chain read by ``fetch``; empty when that fails too (best effort: it only
    explains a failure that is reported anyway)."""
    try:
        async with asyncio.timeout(opts.timeout):
            return await fetch(route)
    except Exception:
        return []


@contextlib.contextmanager
def failing(
    report: ConnectivityReport, name: str, *, connecting: CheckOptions | None = None
) -> Iterator[None]:
    """Record a FlowrtError raised inside as the failure of stage ``name``. With
    ``connecting``, a connection dropped before the login is a connect failure, as in a
    flow ("Could not connect to IMAP host ...")."""
    try:
        yield
    except (StoreClosedException, IOException) as exc:
        error: FlowrtError = exc
        if connecting is not None:
            error = connect_failure(connecting, exc)
        if report.error is None:
            report.fail(name, error)
        if error is exc:
            raise
        raise error from exc
    except FlowrtError as exc:
        if report.error is None:
            report.fail(name, exc)
        raise


async def connect_stage(
    report: ConnectivityReport,
    opts: CheckOptions,
    route: ProxyRoute | None,
    *,
    failure: Callable[[FlowrtError], MessagingException] | None = None,
) -> socket.socket:
    """The TCP (or SOCKS5) connection; ``failure`` words a failed one as the protocol's
    flow does (default: "Could not connect to IMAP host ...")."""
    started = time.perf_counter()
    try:
        sock = await connect(opts.host, opts.port, route=route, timeout=opts.timeout)
    except FlowrtError as exc:
        error = failure(exc) if failure is not None else connect_failure(opts, exc)
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


# ----------------------------------------------------------------------------- the rules


async def starttls(
    opts: CheckOptions,
    command: str,
    offered: bool,
    upgrade: Callable[[], Awaitable[None]],
) -> bool:
    """STARTTLS (IMAP) or STLS (POP3) as ``--protection`` says; True when the link is
    encrypted afterwards. A server that has not ``offered`` it fails starttls-mandatory."""
    if opts.protection == IMPLICIT_TLS[opts.protocol]:
        return True
    if opts.protection == "off":
        return False
    if not offered:
        if opts.protection == "starttls-mandatory":
            raise starttls_missing(opts, command)
        return False
    try:
        await upgrade()
    except (ssl.SSLError, ConnectionResetError) as exc:
        raise TlsFailed(exc) from exc
    except TimeoutError as exc:
        raise SocketTimeoutException(f"TLS handshake timed out after {opts.timeout:g}s") from exc
    return True


def starttls_missing(opts: CheckOptions, command: str = "STARTTLS") -> MessagingException:
    """``starttls-mandatory`` against a server that does not offer it: never a fallback."""
    name = "STARTTLS" if command == "STARTTLS" else f"STARTTLS ({command})"
    return MessagingException(
        f"{opts.host}:{opts.port} does not offer {name}; starttls-mandatory refuses to "
        "continue in clear text",
        hint="a stripped STARTTLS capability can be an attack; use starttls-optional only if "
        f"the server really has no TLS, or the implicit TLS port (--protection "
        f"{IMPLICIT_TLS[opts.protocol]})",
    )


def refuse_plaintext(opts: CheckOptions, encrypted: bool) -> None:
    """``auth plain`` (or a bearer token) over a link that is not encrypted is refused
    unless allowed."""
    if opts.auth in ("plain", "oauth2") and not encrypted and not opts.allow_plaintext_auth:
        raise MessagingException(
            f"refusing auth {opts.auth} over a connection that is not encrypted",
            hint=f"use --protection starttls-mandatory or {IMPLICIT_TLS[opts.protocol]}, or "
            "--auth encrypted, or --allow-plaintext-auth (on a trusted network only)",
        )


def mail_login(opts: CheckOptions, security: TenantSecurity) -> MailLogin:
    """The user and password of ``--credential`` (the password stays a Secret), or with
    ``--auth oauth2`` the user and a token source, as a flow would have them."""
    assert opts.credential is not None
    if opts.auth == "oauth2":
        return oauth2_login(opts, security)
    credential = security.user_credential(opts.credential)
    return MailLogin(credential.user, credential.password, None, opts.credential)


def oauth2_login(opts: CheckOptions, security: TenantSecurity) -> MailLogin:
    from flowrt.adapters.mail.oauth2 import OAuth2Tokens

    name = opts.credential or ""
    credential = security.credential(name)
    if not isinstance(credential, OAuth2ClientCredentials | OAuth2RefreshToken):
        raise CredentialError(
            f"--auth oauth2 needs an oauth2-client-credentials or oauth2-refresh-token "
            f"credential, but '{name}' is of kind {credential.kind}",
            hint=f"sign in with `flowrt credentials oauth2-login {name} --provider ...`",
        )
    user = opts.user or getattr(credential, "user", None)
    if not user:
        raise UsageError(
            f"credential '{name}' names no mailbox: give the one to log in as with --user ADDRESS"
        )
    source = OAuth2Tokens().source(
        credential,
        tls=security.client_context,
        timeout=opts.timeout,
        route=route_for(opts, security),
        store=security,
    )
    return MailLogin(user, None, source, name)


def mail_endpoint(
    opts: CheckOptions, login: MailLogin, context: ssl.SSLContext, route: ProxyRoute | None
) -> MailEndpoint:
    """The endpoint a flow's sender would have, for the adapters' login code."""
    assert opts.protocol in ("imap", "pop3")
    return MailEndpoint(
        protocol="imap" if opts.protocol == "imap" else "pop3",
        host=opts.host,
        port=opts.port,
        protection=opts.protection,
        auth="encrypted"
        if opts.auth == "encrypted"
        else "oauth2"
        if opts.auth == "oauth2"
        else "plain",
        login=login,
        tls=context,
        route=route,
        timeout=opts.timeout,
        allow_plaintext_auth=opts.allow_plaintext_auth,
    )


def similar(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Candidates that look like ``name``: same letters in another case first, then close."""
    names = list(candidates)
    same = [c for c in names if c.lower() == name.lower() and c != name]
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.5)
    folded = difflib.get_close_matches(name.lower(), [c.lower() for c in names], n=limit)
    close += [c for c in names if c.lower() in folded]
    return list(dict.fromkeys(same + close))[:limit]
