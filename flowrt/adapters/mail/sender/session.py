"""What opening an IMAP and a POP3 session share: connect (direct or SOCKS5) with TCP
keepalive, start the client (implicit TLS as the protection says), STARTTLS as the
protection says, and the rules for a login (no clear-text secret without
``allow-plaintext-auth``, a password that can go on the wire). Every failure becomes a chain
with a hint, worded the same for both protocols."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flowrt.adapters.mail.sasl import unsafe_for_wire
from flowrt.adapters.mail.sender.client import StartClient
from flowrt.adapters.mail.sender.endpoint import (
    MailEndpoint,
    StartTlsDialog,
    connect_failure,
    keepalive,
    peer_certificate,
    tls_error,
)
from flowrt.adapters.mail.sender.errors import explain_silent_greeting, timed_out
from flowrt.errors import (
    AuthenticationFailedException,
    FlowrtError,
    IOException,
    MessagingException,
    SocketTimeoutException,
)
from flowrt.net import connect
from flowrt.security.secret import Secret

__all__ = [
    "SessionRefused",
    "login_password",
    "open_client",
    "refuse_clear_text",
    "session_refused",
    "starttls",
]

C = TypeVar("C")


class SessionRefused(Exception):
    """Raised by a ``start`` given to :func:`open_client` when the server's greeting refuses
    the session (POP3 ``-ERR``); its cause is kept as the cause of the error."""

    def __init__(self, greeting: str) -> None:
        super().__init__(greeting)
        self.greeting = greeting


def session_refused(endpoint: MailEndpoint, greeting: str) -> MessagingException:
    return MessagingException(
        f"{endpoint.connect_text}; the server refused the session: {greeting}", retryable=True
    )


async def open_client(endpoint: MailEndpoint, start: StartClient[C]) -> C:
    """The client ``start`` gives over a new connection to ``endpoint`` (implicit TLS with
    the endpoint's context when the protection says so), greeting read."""
    try:
        sock = await connect(
            endpoint.host, endpoint.port, route=endpoint.route, timeout=endpoint.timeout
        )
    except FlowrtError as exc:
        raise connect_failure(endpoint, exc) from exc
    keepalive(sock)
    tls = endpoint.context() if endpoint.implicit_tls else None
    try:
        return await start(
            sock, host=endpoint.host, port=endpoint.port, timeout=endpoint.timeout, tls=tls
        )
    except (ssl.SSLError, ConnectionResetError) as exc:
        if tls is None:
            raise connect_failure(endpoint, IOException(f"connection dropped: {exc}")) from exc
        error = tls_error(endpoint, exc, await peer_certificate(endpoint, None))
        raise error from error.__cause__
    except OSError as exc:  # reset or aborted before anything was said
        raise connect_failure(endpoint, IOException(f"connection lost: {exc}")) from exc
    except SessionRefused as exc:
        raise session_refused(endpoint, exc.greeting) from exc.__cause__
    except (IOException, MessagingException) as exc:
        error = connect_failure(endpoint, exc)
        if timed_out(exc):
            await explain_silent_greeting(
                error,
                protocol=endpoint.protocol,
                host=endpoint.host,
                port=endpoint.port,
                protection=endpoint.protection,
                timeout=endpoint.timeout,
                route=endpoint.route,
            )
        raise error from exc


async def starttls(
    endpoint: MailEndpoint,
    command: str,
    offered: bool,
    upgrade: Callable[[ssl.SSLContext], Awaitable[None]],
    dialog: StartTlsDialog,
) -> None:
    """``upgrade`` the connection with ``command`` (STARTTLS, STLS) when the protection is
    starttls: mandatory fails when the server has not ``offered`` it (a stripped capability
    is an attack, not a reason to fall back), optional goes on without. A failed handshake
    is explained with the certificate read on a second connection (``dialog`` is the clear
    text part before the command)."""
    if not endpoint.starttls:
        return
    if not offered:
        if endpoint.protection == "starttls-optional":
            return
        name = "it" if command == "STARTTLS" else command
        raise MessagingException(
            f"{endpoint.connect_text}; STARTTLS is required (protection starttls-mandatory) "
            f"but the server does not offer {name}",
            hint=f"a server that stops offering {command} may be under attack (a stripped "
            "capability); check the server and the path to it, or use protection "
            f"{endpoint.protocol}s on the implicit TLS port",
            retryable=False,
        )
    try:
        await upgrade(endpoint.context())
    except (ssl.SSLError, ConnectionResetError) as exc:
        error = tls_error(endpoint, exc, await peer_certificate(endpoint, dialog))
        raise error from error.__cause__
    except TimeoutError as exc:
        raise connect_failure(
            endpoint, SocketTimeoutException(f"TLS handshake timed out after {endpoint.timeout:g}s")
        ) from exc


def refuse_clear_text(endpoint: MailEndpoint, encrypted: bool) -> None:
    """A password or OAuth2 token over a link that is not encrypted is refused unless the
    flow says ``allow-plaintext-auth``."""
    if endpoint.auth in ("plain", "oauth2") and not encrypted and not endpoint.allow_plaintext_auth:
        what = "password" if endpoint.auth == "plain" else "OAuth2 token"
        raise MessagingException(
            f"refusing to send the {what} of credential '{endpoint.login.credential}' in clear "
            f"text to {endpoint.host}:{endpoint.port} (protection {endpoint.protection}, no TLS)",
            hint=f"use protection starttls-mandatory or {endpoint.protocol}s, or auth encrypted; "
            "add allow-plaintext-auth only on a trusted network",
            retryable=False,
        )


def login_password(endpoint: MailEndpoint) -> Secret:
    """The login's password, when there is one that can go on the wire."""
    secret = endpoint.login.password
    if secret is None or not secret:
        raise AuthenticationFailedException(
            f"credential '{endpoint.login.credential}' has no password",
            hint=endpoint.credential_hint(),
        )
    if unsafe_for_wire(secret.reveal()):
        raise AuthenticationFailedException(
            f"the password of credential '{endpoint.login.credential}' contains a line break",
            hint=endpoint.credential_hint(),
        )
    return secret
