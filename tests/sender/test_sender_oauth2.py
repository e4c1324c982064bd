"""auth oauth2 (XOAUTH2) for IMAP and POP3 against scripted servers (Dovecot here has no
OAuth2 passdb), with tokens from a loopback token endpoint through flowrt's OAuth2 client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowrt.adapters.mail.imap.session import open_imap
from flowrt.adapters.mail.oauth2 import OAuth2Tokens
from flowrt.adapters.mail.pop3.session import open_pop3
from flowrt.adapters.mail.sender.endpoint import (
    MailEndpoint,
    MailLogin,
    TokenFunction,
    endpoint_from_tenant,
)
from flowrt.errors import AuthenticationFailedException, CredentialError, MessagingException
from flowrt.security import TenantSecurity, edit_credentials
from flowrt.security.credentials import OAuth2ClientCredentials
from flowrt.security.secret import Secret
from flowrt.security.setup import init_tenant
from tests.sender.conftest import make_sender

MAILBOX = "plant@example.com"


def xoauth2_user_and_token(encoded: str) -> tuple[str, str]:
    fields = base64.b64decode(encoded).decode().split("\x01")
    return fields[0].removeprefix("user="), fields[1].removeprefix("auth=Bearer ")


class ScriptedImap:
    """Greets, offers XOAUTH2 with SASL-IR, accepts only ``good_token``."""

    def __init__(self, good_token: str) -> None:
        self.good_token = good_token
        self.seen: list[tuple[str, str]] = []
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caps = "IMAP4rev1 SASL-IR AUTH=XOAUTH2"
        writer.write(f"* OK [CAPABILITY {caps}] scripted\r\n".encode())
        while raw := await reader.readline():
            tag, _, rest = raw.decode().strip().partition(" ")
            words = rest.split()
            if words[0].upper() == "CAPABILITY":
                writer.write(f"* CAPABILITY {caps}\r\n{tag} OK\r\n".encode())
            elif words[0].upper() == "AUTHENTICATE":
                user, token = xoauth2_user_and_token(words[2])
                self.seen.append((user, token))
                if token == self.good_token:
                    writer.write(f"{tag} OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n".encode())
                else:
                    error = base64.b64encode(b'{"status":"401"}').decode()
                    writer.write(f"+ {error}\r\n".encode())
                    await writer.drain()
                    await reader.readline()  # the client's empty answer
                    writer.write(f"{tag} NO [AUTHENTICATIONFAILED] invalid token\r\n".encode())
            elif words[0].upper() == "LOGOUT":
                writer.write(f"* BYE\r\n{tag} OK\r\n".encode())
                await writer.drain()
                writer.close()
                return
            await writer.drain()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def endpoint(port: int, token: TokenFunction, protocol: str = "imap") -> MailEndpoint:
    sender = make_sender(
        protocol,  # type: ignore[arg-type]
        port=port,
        auth="oauth2",
        allow_plaintext_auth=True,
    )
    return MailEndpoint.for_sender(sender, login=MailLogin(MAILBOX, None, token, "m365"), tls=None)


async def test_imap_xoauth2_with_a_token_function() -> None:
    async with (server := ScriptedImap("good")) as port:

        async def provider() -> str:
            return "good"

        client = await open_imap(endpoint(port, TokenFunction(provider)))
        assert client.state == "AUTH" and client.has("IDLE")
        await client.logout()
    assert server.seen == [(MAILBOX, "good")]


async def test_imap_xoauth2_refused_token_is_an_authentication_failure() -> None:
    async with ScriptedImap("good") as port:

        async def provider() -> str:
            return "revoked"

        with pytest.raises(AuthenticationFailedException, match="invalid token") as info:
            await open_imap(endpoint(port, TokenFunction(provider)))
    assert "revoked" not in str(info.value) + (info.value.hint or "")


async def test_oauth2_token_over_clear_text_is_refused() -> None:
    async with ScriptedImap("good") as port:
        sender = make_sender(port=port, auth="oauth2", allow_plaintext_auth=False)

        async def provider() -> str:
            raise AssertionError("no token may be fetched for a clear-text link")

        login = MailLogin(MAILBOX, None, TokenFunction(provider), "m365")
        with pytest.raises(MessagingException, match="refusing to send the OAuth2 token"):
            await open_imap(MailEndpoint.for_sender(sender, login=login, tls=None))


async def test_pop3_xoauth2() -> None:
    seen: list[tuple[str, str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK ready\r\n")
        while raw := await reader.readline():
            words = raw.decode().split()
            if words[0] == "CAPA":
                writer.write(b"+OK\r\nSASL XOAUTH2\r\nUIDL\r\n.\r\n")
            elif words[0] == "AUTH":
                seen.append(xoauth2_user_and_token(words[2]))
                writer.write(b"+OK welcome\r\n")
            elif words[0] == "QUIT":
                writer.write(b"+OK\r\n")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def provider() -> str:
        return "pop-token"

    client = await open_pop3(endpoint(port, TokenFunction(provider), "pop3"))
    await client.quit()
    server.close()
    assert seen == [(MAILBOX, "pop-token")]


# ----------------------------------------------------------------------------- from a tenant


@pytest.fixture
async def token_endpoint() -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback token endpoint: hands out ``token-1``, ``token-2``, ... per request."""
    issued: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        issued.append(f"token-{len(issued) + 1}")
        body = json.dumps({"access_token": issued[-1], "expires_in": 3600}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1]), issued
    server.close()


async def test_endpoint_from_tenant_uses_the_oauth2_client_and_refreshes_a_refused_token(
    tmp_path: Path, token_endpoint: tuple[int, list[str]]
) -> None:
    token_port, issued = token_endpoint
    tenant = init_tenant(tmp_path / "tenant", environ={}).tenant
    with edit_credentials(tenant) as store:
        store.put(
            OAuth2ClientCredentials(
                "mailbox",  # the credential name make_sender uses
                f"http://127.0.0.1:{token_port}/token",
                "client-id",
                Secret("client-secret"),
                "https://outlook.office365.com/.default",
            )
        )
    security = TenantSecurity.open(tenant)
    tokens = OAuth2Tokens()
    async with (server := ScriptedImap("token-2")) as port:
        sender = make_sender(port=port, auth="oauth2", allow_plaintext_auth=True)
        with pytest.raises(CredentialError, match="names no mailbox"):
            endpoint_from_tenant(sender, security, tokens=tokens)
        ep = endpoint_from_tenant(sender, security, tokens=tokens, oauth2_user=MAILBOX)
        # token-1 is refused by the server: the cached token is dropped, token-2 fetched
        with pytest.raises(AuthenticationFailedException):
            await open_imap(ep)  # token-1 was fresh: a fresh token is not retried
        client = await open_imap(ep)  # token-1 cached -> refused -> token-2
        await client.logout()
    assert issued == ["token-1", "token-2"]
    assert [token for _, token in server.seen] == ["token-1", "token-1", "token-2"]
