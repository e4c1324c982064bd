"""Open a logged-in POP3 session for an endpoint, by the same rules as IMAP
(:mod:`flowrt.adapters.mail.imap.session`): STARTTLS (STLS) mandatory means mandatory, no
clear-text password without ``allow-plaintext-auth``, failures as chains with hints.

``auth plain`` is USER/PASS (AUTH PLAIN when the server has no USER); ``encrypted`` is AUTH
CRAM-MD5, or APOP where the server offers it (a timestamp in its greeting) and not CRAM-MD5;
``oauth2`` is AUTH OAUTHBEARER when the server offers it, else AUTH XOAUTH2.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from flowrt.adapters.mail.pop3 import errors
from flowrt.adapters.mail.pop3.client import Pop3Client
from flowrt.adapters.mail.pop3.errors import Pop3ErrorReply
from flowrt.adapters.mail.sasl import (
    OAUTHBEARER_ABORT,
    cram_md5_response,
    oauth2_mechanism,
    oauth2_response,
    plain_response,
    unsafe_for_wire,
)
from flowrt.adapters.mail.sender.endpoint import MailEndpoint, connect_failure
from flowrt.adapters.mail.sender.session import (
    SessionRefused,
    login_password,
    open_client,
    refuse_clear_text,
    starttls,
)
from flowrt.errors import (
    StoreClosedException,
)
from flowrt.security.secret import Secret

__all__ = ["open_pop3"]


async def open_pop3(endpoint: MailEndpoint) -> Pop3Client:
    """A connected, authenticated :class:`Pop3Client` (in the TRANSACTION state)."""
    client = await open_client(endpoint, _start)
    try:
        await client.capa()
        await starttls(endpoint, "STLS", client.has("STLS"), client.stls, _stls_dialog)
        await authenticate(client, endpoint)
    except StoreClosedException as exc:  # dropped or silent before we were logged in
        await client.close()
        raise connect_failure(endpoint, exc) from exc
    except BaseException:
        await client.close()
        raise
    return client


async def _start(sock: socket.socket, **where: Any) -> Pop3Client:
    """:meth:`Pop3Client.start`, with a greeting that is not ``+OK`` as SessionRefused."""
    try:
        return await Pop3Client.start(sock, **where)
    except Pop3ErrorReply as exc:
        raise SessionRefused(exc.reply) from exc


async def _stls_dialog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()  # greeting
    writer.write(b"STLS\r\n")
    if not (await reader.readline()).startswith(b"+OK"):
        raise EOFError("STLS refused")


async def authenticate(client: Pop3Client, endpoint: MailEndpoint) -> None:
    login = endpoint.login
    refuse_clear_text(endpoint, client.tls_active)
    if unsafe_for_wire(login.user) or " " in login.user:
        raise errors.user_unsafe(login.credential, endpoint.credential_hint())
    try:
        if endpoint.auth == "oauth2":
            await _oauth2(client, endpoint)
        elif endpoint.auth == "encrypted":
            await _encrypted(client, endpoint, login_password(endpoint))
        else:
            password = login_password(endpoint)
            if client.capabilities and not client.has("USER") and client.sasl("PLAIN"):
                await client.auth("PLAIN", [], initial=plain_response(login.user, password))
            else:
                await client.user_pass(login.user, password)
    except Pop3ErrorReply as exc:
        if exc.code == "IN-USE":
            raise errors.mailbox_in_use(login.user, exc.reply) from exc
        raise errors.auth_refused(exc.reply, endpoint.credential_hint()) from None


async def _oauth2(client: Pop3Client, endpoint: MailEndpoint) -> None:
    login = endpoint.login
    # A server without CAPA (or without a SASL line) may still take XOAUTH2: try that one.
    mechanism = oauth2_mechanism(client.sasl) or "XOAUTH2"
    abort = [lambda _c: OAUTHBEARER_ABORT] if mechanism == "OAUTHBEARER" else []

    async def attempt(token: Secret) -> None:
        initial = oauth2_response(mechanism, login.user, token, endpoint.host, endpoint.port)
        await client.auth(mechanism, abort, initial=initial)

    token, fresh = await login.access_token()
    try:
        await attempt(token)
    except Pop3ErrorReply:
        if fresh:
            raise
        # a cached token may have been revoked before its time: one fresh token, once
        token, _ = await login.access_token(refresh=True)
        await attempt(token)


async def _encrypted(client: Pop3Client, endpoint: MailEndpoint, password: Secret) -> None:
    user = endpoint.login.user
    if client.sasl("CRAM-MD5"):
        await client.auth(
            "CRAM-MD5", [lambda challenge: cram_md5_response(user, password, challenge)]
        )
    elif client.apop_timestamp is not None:
        await client.apop(user, password)
    else:
        raise errors.neither_cram_md5_nor_apop(f"{endpoint.host}:{endpoint.port}")
