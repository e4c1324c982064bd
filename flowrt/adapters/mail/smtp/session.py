"""One SMTP session: connect through :mod:`flowrt.net`, TLS as the flow says, log in.

aiosmtplib speaks the protocol; this module decides the policy around it and maps every
failure at the boundary:

* the socket always comes from :func:`flowrt.net.connect` (direct or SOCKS5), and aiosmtplib
  gets it with ``sock=``; TLS contexts come from the tenant keystore only;
* ``starttls-mandatory`` fails when the server does not offer STARTTLS: a stripped capability
  is what an attacker on the path would do, so it is never a reason to go on in clear;
* a password (``plain``) or bearer token (``oauth2``) is never sent over a link that is not
  encrypted unless the flow says ``allow-plaintext-auth``; CRAM-MD5 sends only a hash;
* a failed TLS handshake is explained with the server's certificate, fetched on a second
  connection that does not verify (the connectivity test's way), so the chain names the
  issuer and the hint names the import command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Literal, NoReturn, Protocol

import aiosmtplib
import structlog
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
)
from cryptography import x509

from flowrt.adapters.mail.sasl import OAUTH2_MECHANISMS, OAUTHBEARER_ABORT, oauthbearer_response
from flowrt.adapters.mail.smtp.errors import (
    connection_dropped_cause,
    could_not_connect,
    couldnt_connect,
    dropped,
    greeting_refused,
    no_greeting,
    refused_reply,
    reply_text,
    starttls_missing,
    temporary,
    wire_errors,
)
from flowrt.adapters.mail.smtp.target import SmtpTarget
from flowrt.errors import (
    AuthenticationFailedException,
    ConnectException,
    IOException,
    MessagingException,
)
from flowrt.net import connect, speaks_tls_at_once, tls_failure
from flowrt.security import Secret, unverified_context

log = structlog.get_logger("flowrt.smtp")

AuthMethod = Literal["plain", "encrypted", "oauth2"]
_STARTTLS = ("starttls-mandatory", "starttls-optional")


class TokenProvider(Protocol):
    """Where an OAuth2 access token comes from (see :mod:`flowrt.adapters.mail.oauth2`)."""

    async def token(self, *, refresh: bool = False) -> tuple[Secret, bool]:
        """The token, and whether it was fetched just now (False: it came from the cache)."""
        ...


@dataclasses.dataclass(frozen=True)
class Login:
    """How to log in: the method, the user, and the secret (never shown in a repr)."""

    method: AuthMethod
    credential: str
    user: str
    password: Secret | None = dataclasses.field(default=None, repr=False, compare=False)
    token: TokenProvider | None = dataclasses.field(default=None, repr=False, compare=False)
    allow_plaintext: bool = False


class SmtpSession:
    """A connected, greeted and (when asked) authenticated SMTP connection."""

    def __init__(self, smtp: aiosmtplib.SMTP, target: SmtpTarget, *, encrypted: bool) -> None:
        self.smtp = smtp
        self.target = target
        self.encrypted = encrypted
        self.created = time.monotonic()
        self.last_used = self.created
        self.transactions = 0

    @property
    def alive(self) -> bool:
        """False once either side closed the connection (a reply of 421 closes it too)."""
        return self.smtp.is_connected

    def supports(self, extension: str) -> bool:
        return self.smtp.supports_extension(extension)

    async def healthy(self) -> bool:
        """NOOP: does the server still answer on this connection?"""
        if not self.smtp.is_connected:
            return False
        try:
            await self.smtp.noop(timeout=min(self.target.timeout, 5.0))
        except (SMTPException, OSError):
            return False
        return self.smtp.is_connected

    async def close(self) -> None:
        """QUIT politely (bounded), then close whatever happens."""
        if self.smtp.is_connected:
            # Best effort: the server may already be gone; nothing here can fail the delivery.
            with contextlib.suppress(SMTPException, OSError):
                await self.smtp.quit(timeout=min(self.target.timeout, 2.0))
        self.smtp.close()

    def abort(self) -> None:
        """Close without QUIT (after a protocol error, when the session state is unknown)."""
        self.smtp.close()

    def __repr__(self) -> str:
        state = "open" if self.alive else "closed"
        tls = "tls" if self.encrypted else "plain"
        return f"<SmtpSession {self.target.address} {tls} {state} {self.transactions} sent>"


async def open_session(
    target: SmtpTarget,
    *,
    tls: Callable[[], ssl.SSLContext],
    login: Login | None,
    local_hostname: str,
) -> SmtpSession:
    """Connect, greet, STARTTLS or implicit TLS as ``target.protection`` says, log in."""
    implicit = target.protection == "smtps"
    context = tls() if target.protection != "off" else None
    try:
        sock = await connect(target.host, target.port, route=target.route, timeout=target.timeout)
    except IOException as exc:
        raise couldnt_connect(target, exc) from exc
    try:
        smtp = aiosmtplib.SMTP(
            hostname=target.host,  # with sock= it is only the TLS server name (SNI, checking)
            sock=sock,
            use_tls=implicit,
            start_tls=False,  # the policy below decides, not aiosmtplib's "if offered"
            tls_context=context if implicit else None,
            timeout=target.timeout,
            local_hostname=local_hostname,
        )
    except BaseException:
        sock.close()
        raise
    # From here on the socket belongs to the transport: closing it directly would free the
    # descriptor while a TLS shutdown still runs on it, and the next socket would collide.
    try:
        greeting = await greet(smtp, target, local_hostname)
        encrypted = implicit
        with wire_errors(target, "EHLO", greeting=greeting):
            await hello(smtp, target)
        if target.protection in _STARTTLS:
            encrypted = await _starttls(smtp, target, context, local_hostname)
        if login is not None:
            await authenticate(smtp, target, login, encrypted=encrypted)
    except BaseException:
        smtp.close()
        raise
    log.debug(
        "smtp.session_opened",
        **target.log_fields(),
        protection=target.protection,
        tls=encrypted,
        auth=login.method if login else "none",
    )
    return SmtpSession(smtp, target, encrypted=encrypted)


TlsFailed = Callable[[SmtpTarget, "ssl.SSLError | ConnectionError", str], Awaitable[NoReturn]]


async def greet(
    smtp: aiosmtplib.SMTP,
    target: SmtpTarget,
    local_hostname: str,
    *,
    tls_failed: TlsFailed | None = None,
) -> str:
    """Read the server's greeting (implicit TLS first with smtps); the greeting, one line.
    A failed handshake goes to ``tls_failed`` (the connectivity test shows the chain)."""
    try:
        response = await smtp.connect()
    except SMTPConnectResponseError as exc:
        raise greeting_refused(target, exc.code, exc.message) from None
    except SMTPConnectTimeoutError as exc:
        tls_at_once = not smtp.use_tls and await speaks_tls_at_once(
            target.host, target.port, route=target.route, timeout=target.timeout
        )
        error = no_greeting(target, tls_at_once=tls_at_once)
        assert error.__cause__ is not None
        error.__cause__.__cause__ = exc  # for the log; the shown chain stops above it
        raise error from error.__cause__
    except SMTPConnectError as exc:
        reason = exc.__cause__
        if isinstance(reason, ssl.SSLError) or (
            smtp.use_tls and isinstance(reason, ConnectionError)
        ):
            await (tls_failed or _tls_failed)(target, reason, local_hostname)
        if isinstance(reason, SMTPServerDisconnected):
            raise dropped(target, "the greeting") from connection_dropped_cause()
        cause = ConnectException(str(reason or exc))
        raise couldnt_connect(target, cause) from cause
    return reply_text(response.code, response.message)


async def hello(smtp: aiosmtplib.SMTP, target: SmtpTarget) -> None:
    try:
        await smtp.ehlo()
    except SMTPHeloError as exc:
        if not smtp.is_connected:
            raise refused_reply(target, "EHLO", exc.code, exc.message) from None
        try:  # a server from before ESMTP
            await smtp.helo()
        except SMTPHeloError as again:
            raise refused_reply(target, "HELO", again.code, again.message) from None


async def _starttls(
    smtp: aiosmtplib.SMTP,
    target: SmtpTarget,
    context: ssl.SSLContext | None,
    local_hostname: str,
) -> bool:
    """True when the link is now encrypted."""
    if not smtp.supports_extension("starttls"):
        if target.protection == "starttls-mandatory":
            raise starttls_missing(target)
        log.warning("smtp.starttls_not_offered", **target.log_fields())
        return False
    assert context is not None
    try:
        with wire_errors(target, "STARTTLS"):
            await smtp.starttls(tls_context=context, server_hostname=target.host)
    except SMTPResponseException as exc:
        raise refused_reply(target, "STARTTLS", exc.code, exc.message) from None
    except ssl.SSLError as exc:
        await _tls_failed(target, exc, local_hostname)
    with wire_errors(target, "EHLO after STARTTLS"):
        await hello(smtp, target)
    return True


async def _tls_failed(
    target: SmtpTarget, exc: ssl.SSLError | ConnectionError, local_hostname: str
) -> NoReturn:
    peer = await fetch_peer_certificate(target, local_hostname=local_hostname)
    cause = tls_failure(
        exc, host=target.host, port=target.port, peer=peer, fix_command=target.fix_command
    )
    cause.__cause__ = exc
    raise could_not_connect(target) from cause


async def fetch_peer_certificate(
    target: SmtpTarget, *, local_hostname: str
) -> x509.Certificate | None:
    """The server's certificate from a second connection that does not verify, or None.

    Only to explain a failed handshake: nothing is sent on this connection but EHLO and
    STARTTLS, and it is closed right after the handshake.
    """
    implicit = target.protection == "smtps"
    probe: aiosmtplib.SMTP | None = None
    try:
        async with asyncio.timeout(target.timeout):
            sock = await connect(
                target.host, target.port, route=target.route, timeout=target.timeout
            )
            probe = aiosmtplib.SMTP(
                hostname=target.host,
                sock=sock,
                use_tls=implicit,
                start_tls=False,
                tls_context=unverified_context() if implicit else None,
                timeout=target.timeout,
                local_hostname=local_hostname,
            )
            await probe.connect()
            if not implicit:
                await probe.starttls(tls_context=unverified_context())
            ssl_object = probe.get_transport_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    except (SMTPException, OSError, TimeoutError, ValueError) as exc:
        log.debug("smtp.peer_certificate_unavailable", **target.log_fields(), error=str(exc))
        return None
    finally:
        if probe is not None:
            probe.close()
    return x509.load_der_x509_certificate(der) if der else None


async def authenticate(
    smtp: aiosmtplib.SMTP, target: SmtpTarget, login: Login, *, encrypted: bool
) -> str:
    """Log in as ``login`` says, with a mechanism the server offers; the server's reply."""
    if login.method in ("plain", "oauth2") and not encrypted and not login.allow_plaintext:
        what = "password" if login.method == "plain" else "OAuth2 token"
        raise MessagingException(
            f"refusing to send the {what} of credential '{login.credential}' in clear: the "
            f"connection to {target.address} is not encrypted (protection "
            f"{target.protection})",
            hint="use protection starttls-mandatory or smtps, auth encrypted (CRAM-MD5), or "
            "add allow-plaintext-auth if the link is protected otherwise",
            retryable=False,
        )
    mechanism = _mechanism(smtp, target, login, encrypted=encrypted)
    try:
        with wire_errors(target, f"AUTH {mechanism}"):
            if login.method == "oauth2":
                await _oauth2(smtp, login, target, mechanism)
            else:
                assert login.password is not None
                password = login.password.reveal()
                if mechanism == "PLAIN":
                    response = await smtp.auth_plain(login.user, password)
                elif mechanism == "LOGIN":
                    response = await smtp.auth_login(login.user, password)
                else:
                    response = await smtp.auth_crammd5(login.user, password)
                return reply_text(response.code, response.message)
    except SMTPResponseException as exc:  # SMTPAuthenticationError and other replies
        raise _auth_failed(target, login, exc.code, exc.message) from None
    return f"{mechanism} as {login.user}"


def _mechanism(smtp: aiosmtplib.SMTP, target: SmtpTarget, login: Login, *, encrypted: bool) -> str:
    offered = [m.upper() for m in smtp.server_auth_methods]
    wanted: list[str]
    if login.method == "plain":
        wanted = [m for m in ("PLAIN", "LOGIN") if m in offered]
    elif login.method == "encrypted":
        wanted = ["CRAM-MD5"] if "CRAM-MD5" in offered else []
    else:
        wanted = [m for m in OAUTH2_MECHANISMS if m in offered]
    if wanted:
        return wanted[0]
    names = {"plain": "PLAIN or LOGIN", "encrypted": "CRAM-MD5", "oauth2": "OAUTHBEARER or XOAUTH2"}
    if not offered:
        what = "offers no AUTH at all"
        hint = (
            "many servers offer AUTH only over TLS; use protection starttls-mandatory or smtps"
            if not encrypted
            else "the server may not need a login from this network; try auth none"
        )
    else:
        what = f"offers AUTH {' '.join(offered)}"
        hint = {
            "encrypted": "use auth plain over TLS (protection starttls-mandatory or smtps)",
            "plain": "use auth encrypted (CRAM-MD5) if the server offers it",
            "oauth2": "this server does not take OAuth2 tokens for SMTP; use auth plain over TLS",
        }[login.method]
    raise MessagingException(
        f"auth {login.method} needs AUTH {names[login.method]}, but {target.address} {what}",
        hint=hint,
        retryable=False,
    )


async def _oauth2(smtp: aiosmtplib.SMTP, login: Login, target: SmtpTarget, mechanism: str) -> None:
    assert login.token is not None
    token, fresh = await login.token.token()
    try:
        await bearer_auth(smtp, login.user, token, target, mechanism)
    except SMTPAuthenticationError:
        if fresh or not smtp.is_connected:
            raise
        # A cached token may have been revoked before its time: one fresh token, once.
        log.info("smtp.oauth2_token_refused", **target.log_fields(), credential=login.credential)
        token, _ = await login.token.token(refresh=True)
        await bearer_auth(smtp, login.user, token, target, mechanism)


async def bearer_auth(
    smtp: aiosmtplib.SMTP, user: str, token: Secret, target: SmtpTarget, mechanism: str
) -> None:
    """AUTH XOAUTH2 or OAUTHBEARER with the initial response; the server's error challenge
    (334 + JSON) is answered as each mechanism wants, to get the final 5xx."""
    if mechanism == "XOAUTH2":
        await smtp.auth_xoauth2(user, token.reveal())
        return
    initial = oauthbearer_response(user, token, target.host, target.port)
    response = await smtp.execute_command(b"AUTH", b"OAUTHBEARER", base64.b64encode(initial))
    if response.code == SMTPStatus.auth_continue:
        response = await smtp.execute_command(base64.b64encode(OAUTHBEARER_ABORT))
    if response.code != SMTPStatus.auth_successful:
        raise SMTPAuthenticationError(response.code, response.message)


def _auth_failed(
    target: SmtpTarget, login: Login, code: int, message: str
) -> AuthenticationFailedException:
    refused = getattr(login.token, "refused_hint", None)
    if login.method == "oauth2" and isinstance(refused, str) and not temporary(code):
        return AuthenticationFailedException(
            reply_text(code, message),
            hint=f"{target.address} refused the login of {login.user}; {refused}",
            retryable=False,
        )
    what = {
        "plain": "user and password",
        "encrypted": "user and password",
        "oauth2": "client ID, secret and scope",
    }[login.method]
    alone = (
        f"; to check credential '{login.credential}' against the server alone: `flowrt test "
        f"smtp {target.address} --protection {target.protection} --auth {login.method} "
        f"--credential {login.credential}`"
        if login.method != "oauth2"
        else ""
    )
    return AuthenticationFailedException(
        reply_text(code, message),
        hint=f"{target.address} refused the login of {login.user}; check the {what} in "
        f"credential {login.credential} (`flowrt credentials show {login.credential}`){alone}",
        retryable=temporary(code),
    )


_fqdn: str | None = None


async def local_hostname() -> str:
    """The name sent in EHLO: this machine's FQDN, looked up once (it may need DNS)."""
    global _fqdn
    if _fqdn is None:
        name = await asyncio.to_thread(socket.getfqdn)
        # EHLO takes one token; a name with spaces or control characters would break it.
        _fqdn = (
            name
            if name and name.isascii() and name.isprintable() and " " not in name
            else ("localhost")
        )
    return _fqdn
