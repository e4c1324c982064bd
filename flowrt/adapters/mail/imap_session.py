"""Open a logged-in IMAP session for an endpoint: connect (direct or SOCKS5), TLS as the
flow's protection says, log in as its auth says, and turn every failure into a chain with a
hint.

The rules (design: trust and security):

- ``starttls-mandatory`` fails when the server does not offer STARTTLS: a stripped
  capability is an attack, not a reason to fall back. ``starttls-optional`` goes on without.
- ``auth plain`` over a connection that is not encrypted is refused unless the flow says
  ``allow-plaintext-auth``.
- ``auth plain`` uses LOGIN, or AUTHENTICATE PLAIN when the server says LOGINDISABLED or the
  user or password is not ASCII; ``encrypted`` is CRAM-MD5; ``oauth2`` is XOAUTH2.
"""

from __future__ import annotations

import asyncio
import ssl

from flowrt.adapters.mail.imap_client import ImapClient, Responder
from flowrt.adapters.mail.imap_parse import response_text
from flowrt.adapters.mail.sender_auth import (
    cram_md5_response,
    plain_response,
    unsafe_for_wire,
    xoauth2_response,
)
from flowrt.adapters.mail.sender_connection import (
    MailEndpoint,
    connect_failure,
    keepalive,
    peer_certificate,
    tls_error,
)
from flowrt.errors import (
    AuthenticationFailedException,
    FlowrtError,
    IOException,
    MessagingException,
    SocketTimeoutException,
    StoreClosedException,
)
from flowrt.net import connect
from flowrt.security.secret import Secret

__all__ = ["open_imap"]


async def open_imap(endpoint: MailEndpoint) -> ImapClient:
    """A connected, authenticated :class:`ImapClient` (no folder selected yet)."""
    client = await _connect(endpoint)
    try:
        await _secure(client, endpoint)
        await authenticate(client, endpoint)
    except StoreClosedException as exc:  # dropped or silent before we were logged in
        client.abort()
        raise connect_failure(endpoint, exc) from exc
    except BaseException:
        await client.logout()
        raise
    return client


async def _connect(endpoint: MailEndpoint) -> ImapClient:
    try:
        sock = await connect(
            endpoint.host, endpoint.port, route=endpoint.route, timeout=endpoint.timeout
        )
    except FlowrtError as exc:
        raise connect_failure(endpoint, exc) from exc
    keepalive(sock)
    tls = endpoint.context() if endpoint.implicit_tls else None
    try:
        client = await ImapClient.start(
            sock, host=endpoint.host, port=endpoint.port, timeout=endpoint.timeout, tls=tls
        )
    except (ssl.SSLError, ConnectionResetError) as exc:
        if tls is None:
            raise connect_failure(endpoint, IOException(f"connection dropped: {exc}")) from exc
        peer = await peer_certificate(endpoint, None)
        error = tls_error(endpoint, exc, peer)
        raise error from error.__cause__
    except OSError as exc:  # reset or aborted before anything was said
        raise connect_failure(endpoint, IOException(f"connection lost: {exc}")) from exc
    except (IOException, MessagingException) as exc:
        raise connect_failure(endpoint, exc) from exc
    greeting = client.greeting.decode("utf-8", "replace").strip()
    if client.state == "LOGOUT":
        await client.logout()
        raise MessagingException(
            f"{endpoint.connect_text}; the server refused the session: {greeting}",
            retryable=True,
        )
    return client


async def _secure(client: ImapClient, endpoint: MailEndpoint) -> None:
    await client.capability()
    if not endpoint.starttls:
        return
    if not client.has("STARTTLS"):
        if endpoint.protection == "starttls-optional":
            return
        raise MessagingException(
            f"{endpoint.connect_text}; STARTTLS is required (protection starttls-mandatory) "
            "but the server does not offer it",
            hint="a server that stops offering STARTTLS may be under attack (a stripped "
            "capability); check the server and the path to it, or use protection imaps on "
            "the implicit TLS port",
            retryable=False,
        )
    try:
        await client.starttls(endpoint.context())
    except (ssl.SSLError, ConnectionResetError) as exc:
        peer = await peer_certificate(endpoint, _starttls_dialog)
        error = tls_error(endpoint, exc, peer)
        raise error from error.__cause__
    except TimeoutError as exc:
        raise connect_failure(
            endpoint, SocketTimeoutException(f"TLS handshake timed out after {endpoint.timeout:g}s")
        ) from exc


async def _starttls_dialog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The clear-text part before STARTTLS, for reading the certificate on a second
    connection (see :func:`peer_certificate`)."""
    await reader.readline()  # greeting
    writer.write(b"s1 STARTTLS\r\n")
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError("closed before STARTTLS")
        if line.startswith(b"s1 "):
            if not line[3:].upper().startswith(b"OK"):
                raise EOFError("STARTTLS refused")
            return


async def authenticate(client: ImapClient, endpoint: MailEndpoint) -> None:
    login = endpoint.login
    if client.state == "AUTH":  # PREAUTH: the server knows us already
        return
    encrypted = client.tls_active
    if endpoint.auth in ("plain", "oauth2") and not encrypted and not endpoint.allow_plaintext_auth:
        what = "password" if endpoint.auth == "plain" else "OAuth2 token"
        raise MessagingException(
            f"refusing to send the {what} of credential '{login.credential}' in clear text "
            f"to {endpoint.host}:{endpoint.port} (protection {endpoint.protection}, no TLS)",
            hint="use protection starttls-mandatory or imaps, or auth encrypted; add "
            "allow-plaintext-auth only on a trusted network",
            retryable=False,
        )
    if unsafe_for_wire(login.user):
        raise AuthenticationFailedException(
            f"the user name of credential '{login.credential}' contains a line break",
            hint=endpoint.credential_hint(),
        )
    if endpoint.auth == "oauth2":
        token, fresh = await login.access_token()
        response = await client.authenticate(
            "XOAUTH2", [], initial=xoauth2_response(login.user, token)
        )
        if response.result != "OK" and not fresh:
            # a cached token may have been revoked before its time: one fresh token, once
            token, _ = await login.access_token(refresh=True)
            response = await client.authenticate(
                "XOAUTH2", [], initial=xoauth2_response(login.user, token)
            )
    else:
        password = _password(endpoint)
        if endpoint.auth == "encrypted":
            if not client.has("AUTH=CRAM-MD5"):
                raise AuthenticationFailedException(
                    f"IMAP host {endpoint.host}:{endpoint.port} does not offer CRAM-MD5 "
                    "(auth encrypted)",
                    hint="use auth plain over TLS (protection starttls-mandatory or imaps)",
                )
            responder: Responder = lambda challenge: cram_md5_response(  # noqa: E731
                login.user, password, challenge
            )
            response = await client.authenticate("CRAM-MD5", [responder])
        elif _use_authenticate_plain(client, login.user, password):
            response = await client.authenticate(
                "PLAIN", [], initial=plain_response(login.user, password)
            )
        else:
            response = await client.login(login.user, password.reveal())
    if response.result != "OK":
        raise AuthenticationFailedException(
            response_text(response) or f"{response.result} (no text)",
            hint=endpoint.credential_hint(),
        )


def _password(endpoint: MailEndpoint) -> Secret:
    password = endpoint.login.password
    if password is None or not password:
        raise AuthenticationFailedException(
            f"credential '{endpoint.login.credential}' has no password",
            hint=endpoint.credential_hint(),
        )
    if unsafe_for_wire(password.reveal()):
        raise AuthenticationFailedException(
            f"the password of credential '{endpoint.login.credential}' contains a line break",
            hint=endpoint.credential_hint(),
        )
    return password


def _use_authenticate_plain(client: ImapClient, user: str, password: Secret) -> bool:
    if not client.has("AUTH=PLAIN"):
        return False
    # LOGIN takes quoted strings, which are 7-bit; SASL PLAIN carries UTF-8
    return client.has("LOGINDISABLED") or not (user.isascii() and password.reveal().isascii())
