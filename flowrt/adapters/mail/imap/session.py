"""Open a logged-in IMAP session for an endpoint: connect (direct or SOCKS5), TLS as the
flow's protection says, log in as its auth says, and turn every failure into a chain with a
hint.

The rules (trust comes only from the keystore; see ARCHITECTURE.md):

- ``starttls-mandatory`` fails when the server does not offer STARTTLS: a stripped
  capability is an attack, not a reason to fall back. ``starttls-optional`` goes on without.
- ``auth plain`` over a connection that is not encrypted is refused unless the flow says
  ``allow-plaintext-auth``.
- ``auth plain`` uses LOGIN, or AUTHENTICATE PLAIN when the server says LOGINDISABLED or the
  user or password is not ASCII; ``encrypted`` is CRAM-MD5; ``oauth2`` is OAUTHBEARER when
  the server offers it, else XOAUTH2.
"""

from __future__ import annotations

import asyncio

from aioimaplib import Response

from flowrt.adapters.mail.imap import errors
from flowrt.adapters.mail.imap.client import ImapClient, Responder
from flowrt.adapters.mail.imap.parse import response_text
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
    login_password,
    open_client,
    refuse_clear_text,
    session_refused,
    starttls,
)
from flowrt.errors import StoreClosedException
from flowrt.security.secret import Secret

__all__ = ["open_imap"]


async def open_imap(endpoint: MailEndpoint) -> ImapClient:
    """A connected, authenticated :class:`ImapClient` (no folder selected yet)."""
    client = await open_client(endpoint, ImapClient.start)
    if client.state == "LOGOUT":  # the greeting refused the session
        greeting = client.greeting.decode("utf-8", "replace").strip()
        await client.logout()
        error = session_refused(endpoint, greeting)
        raise error from error.__cause__
    try:
        await client.capability()
        await starttls(
            endpoint, "STARTTLS", client.has("STARTTLS"), client.starttls, _starttls_dialog
        )
        await authenticate(client, endpoint)
    except StoreClosedException as exc:  # dropped or silent before we were logged in
        client.abort()
        raise connect_failure(endpoint, exc) from exc
    except BaseException:
        await client.logout()
        raise
    return client


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
    refuse_clear_text(endpoint, client.tls_active)
    if unsafe_for_wire(login.user):
        raise errors.user_has_line_break(login.credential, endpoint.credential_hint())
    if endpoint.auth == "oauth2":
        response = await _oauth2(client, endpoint)
    else:
        password = login_password(endpoint)
        if endpoint.auth == "encrypted":
            if not client.has("AUTH=CRAM-MD5"):
                raise errors.no_cram_md5(f"{endpoint.host}:{endpoint.port}")
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
        raise errors.auth_refused(
            response.result, response_text(response), endpoint.credential_hint()
        )


async def _oauth2(client: ImapClient, endpoint: MailEndpoint) -> Response:
    login = endpoint.login
    mechanism = oauth2_mechanism(lambda m: client.has(f"AUTH={m}"))
    if mechanism is None:
        raise errors.no_oauth2(f"{endpoint.host}:{endpoint.port}")
    abort: list[Responder] = [lambda _c: OAUTHBEARER_ABORT] if mechanism == "OAUTHBEARER" else []

    async def attempt(token: Secret) -> Response:
        initial = oauth2_response(mechanism, login.user, token, endpoint.host, endpoint.port)
        return await client.authenticate(mechanism, abort, initial=initial)

    token, fresh = await login.access_token()
    response = await attempt(token)
    if response.result != "OK" and not fresh:
        # a cached token may have been revoked before its time: one fresh token, once
        token, _ = await login.access_token(refresh=True)
        response = await attempt(token)
    return response


def _use_authenticate_plain(client: ImapClient, user: str, password: Secret) -> bool:
    if not client.has("AUTH=PLAIN"):
        return False
    # LOGIN takes quoted strings, which are 7-bit; SASL PLAIN carries UTF-8
    return client.has("LOGINDISABLED") or not (user.isascii() and password.reveal().isascii())
