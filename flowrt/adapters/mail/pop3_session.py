"""Open a logged-in POP3 session for an endpoint, by the same rules as IMAP
(:mod:`flowrt.adapters.mail.imap_session`): STARTTLS (STLS) mandatory means mandatory, no
clear-text password without ``allow-plaintext-auth``, failures as chains with hints.

``auth plain`` is USER/PASS (AUTH PLAIN when the server has no USER); ``encrypted`` is AUTH
CRAM-MD5, or APOP where the server offers it (a timestamp in its greeting) and not CRAM-MD5;
``oauth2`` is AUTH XOAUTH2.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from flowrt.adapters.mail.pop3_client import Pop3Client, Pop3ErrorReply
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

__all__ = ["open_pop3"]


async def open_pop3(endpoint: MailEndpoint) -> Pop3Client:
    """A connected, authenticated :class:`Pop3Client` (in the TRANSACTION state)."""
    try:
        sock = await connect(
            endpoint.host, endpoint.port, route=endpoint.route, timeout=endpoint.timeout
        )
    except FlowrtError as exc:
        raise connect_failure(endpoint, exc) from exc
    keepalive(sock)
    client = await _start(sock, endpoint)
    try:
        await _secure(client, endpoint)
        await authenticate(client, endpoint)
    except StoreClosedException as exc:  # dropped or silent before we were logged in
        await client.close()
        raise connect_failure(endpoint, exc) from exc
    except BaseException:
        await client.close()
        raise
    return client


async def _start(sock: socket.socket, endpoint: MailEndpoint) -> Pop3Client:
    tls = endpoint.context() if endpoint.implicit_tls else None
    try:
        return await Pop3Client.start(
            sock, host=endpoint.host, port=endpoint.port, timeout=endpoint.timeout, tls=tls
        )
    except (ssl.SSLError, ConnectionResetError) as exc:
        if tls is None:
            raise connect_failure(endpoint, IOException(f"connection dropped: {exc}")) from exc
        error = tls_error(endpoint, exc, await peer_certificate(endpoint, None))
        raise error from error.__cause__
    except OSError as exc:  # reset or aborted before anything was said
        raise connect_failure(endpoint, IOException(f"connection lost: {exc}")) from exc
    except Pop3ErrorReply as exc:
        raise MessagingException(
            f"{endpoint.connect_text}; the server refused the session: {exc.reply}",
            retryable=True,
        ) from exc
    except (IOException, MessagingException) as exc:
        raise connect_failure(endpoint, exc) from exc


async def _secure(client: Pop3Client, endpoint: MailEndpoint) -> None:
    await client.capa()
    if not endpoint.starttls:
        return
    if not client.has("STLS"):
        if endpoint.protection == "starttls-optional":
            return
        raise MessagingException(
            f"{endpoint.connect_text}; STARTTLS is required (protection starttls-mandatory) "
            "but the server does not offer STLS",
            hint="a server that stops offering STLS may be under attack (a stripped "
            "capability); check the server and the path to it, or use protection pop3s on "
            "the implicit TLS port",
            retryable=False,
        )
    try:
        await client.stls(endpoint.context())
    except (ssl.SSLError, ConnectionResetError) as exc:
        error = tls_error(endpoint, exc, await peer_certificate(endpoint, _stls_dialog))
        raise error from error.__cause__
    except TimeoutError as exc:
        raise connect_failure(
            endpoint, SocketTimeoutException(f"TLS handshake timed out after {endpoint.timeout:g}s")
        ) from exc


async def _stls_dialog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()  # greeting
    writer.write(b"STLS\r\n")
    if not (await reader.readline()).startswith(b"+OK"):
        raise EOFError("STLS refused")


async def authenticate(client: Pop3Client, endpoint: MailEndpoint) -> None:
    login = endpoint.login
    encrypted = client.tls_active
    if endpoint.auth in ("plain", "oauth2") and not encrypted and not endpoint.allow_plaintext_auth:
        what = "password" if endpoint.auth == "plain" else "OAuth2 token"
        raise MessagingException(
            f"refusing to send the {what} of credential '{login.credential}' in clear text "
            f"to {endpoint.host}:{endpoint.port} (protection {endpoint.protection}, no TLS)",
            hint="use protection starttls-mandatory or pop3s, or auth encrypted; add "
            "allow-plaintext-auth only on a trusted network",
            retryable=False,
        )
    if unsafe_for_wire(login.user) or " " in login.user:
        raise AuthenticationFailedException(
            f"the user name of credential '{login.credential}' contains a space or line break",
            hint=endpoint.credential_hint(),
        )
    try:
        if endpoint.auth == "oauth2":
            await _xoauth2(client, endpoint)
        elif endpoint.auth == "encrypted":
            await _encrypted(client, endpoint, _password(endpoint))
        else:
            password = _password(endpoint)
            if client.capabilities and not client.has("USER") and client.sasl("PLAIN"):
                await client.auth("PLAIN", [], initial=plain_response(login.user, password))
            else:
                await client.user_pass(login.user, password)
    except Pop3ErrorReply as exc:
        if exc.code == "IN-USE":
            raise MessagingException(
                f"the POP3 mailbox of {login.user} is in use by another session: {exc.reply}",
                hint="another client (or a second runtime) holds the POP3 lock; it is "
                "released when that session ends",
                retryable=True,
            ) from exc
        raise AuthenticationFailedException(
            exc.reply or "-ERR (no text)", hint=endpoint.credential_hint()
        ) from None


async def _xoauth2(client: Pop3Client, endpoint: MailEndpoint) -> None:
    login = endpoint.login
    token, fresh = await login.access_token()
    try:
        await client.auth("XOAUTH2", [], initial=xoauth2_response(login.user, token))
    except Pop3ErrorReply:
        if fresh:
            raise
        # a cached token may have been revoked before its time: one fresh token, once
        token, _ = await login.access_token(refresh=True)
        await client.auth("XOAUTH2", [], initial=xoauth2_response(login.user, token))


async def _encrypted(client: Pop3Client, endpoint: MailEndpoint, password: Secret) -> None:
    user = endpoint.login.user
    if client.sasl("CRAM-MD5"):
        await client.auth(
            "CRAM-MD5", [lambda challenge: cram_md5_response(user, password, challenge)]
        )
    elif client.apop_timestamp is not None:
        await client.apop(user, password)
    else:
        raise AuthenticationFailedException(
            f"POP3 host {endpoint.host}:{endpoint.port} offers neither CRAM-MD5 nor APOP "
            "(auth encrypted)",
            hint="use auth plain over TLS (protection starttls-mandatory or pop3s)",
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
