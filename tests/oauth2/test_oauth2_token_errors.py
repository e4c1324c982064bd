"""The token endpoint misbehaving (HTML, 500, no access_token, too slow, a dead refresh
token): each ends in a chain and a hint that say what happened, and the stored refresh token
stays as it was. Also: rotation stored atomically and only over the token it replaces, a
chunked answer, and the token request taking the SOCKS5 route of the mail connection."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowrt.adapters.mail.oauth2 import OAuth2Tokens, request_token
from flowrt.errors import (
    AuthenticationFailedException,
    MessagingException,
    find_hint,
    is_retryable,
    render_chain,
)
from flowrt.net import ProxyRoute
from flowrt.security import OAuth2RefreshToken, Secret, TenantSecurity, edit_credentials
from flowrt.security.credentials import Credential
from flowrt.tenant import Tenant
from tests.oauth2.conftest import add_refresh_credential, security, stored_refresh_token
from tests.servers import AuthorizationServer, DanteServer, ServerStartError, ServerUnavailable


@pytest.fixture
def auth() -> Iterator[AuthorizationServer]:
    server = AuthorizationServer().start()
    yield server
    server.stop()


def credential(tenant: Path) -> OAuth2RefreshToken:
    found = security(tenant).credential("m365")
    assert isinstance(found, OAuth2RefreshToken)
    return found


async def fetch(tenant: Path, timeout: float = 5) -> tuple[Secret, bool]:
    s = security(tenant)
    return await OAuth2Tokens().get(
        credential(tenant), tls=s.client_context, timeout=timeout, store=s
    )


def prefix(auth: AuthorizationServer) -> str:
    return (
        f"MessagingException: Could not get an OAuth2 token for credential m365 from "
        f"{auth.token_url}\n  nested exception is:\n\t"
    )


@pytest.mark.parametrize(
    ("mode", "cause", "retryable", "hint"),
    [
        (
            "html",
            "IOException: HTTP 200 with an HTML page ('Sign in - Portal') instead of JSON",
            False,
            "the token URL of credential m365 does not lead to a token endpoint",
        ),
        (
            "500",
            "IOException: HTTP 500 with text/plain ('Internal Server Error') instead of JSON",
            True,
            "the identity provider has a problem of its own; the message is retried",
        ),
        (
            "no-access-token",
            "IOException: HTTP 200 without access_token in the JSON (it has expires_in, "
            "token_type)",
            False,
            "the token URL of credential m365 answers, but not as a token endpoint",
        ),
    ],
)
async def test_a_token_endpoint_that_misbehaves(
    tenant: Path, auth: AuthorizationServer, mode: str, cause: str, retryable: bool, hint: str
) -> None:
    refresh = add_refresh_credential(tenant, auth, "m365", "plant@example.com")
    auth.mode = mode
    with pytest.raises(MessagingException) as info:
        await fetch(tenant)
    assert render_chain(info.value) == prefix(auth) + cause
    assert hint in (find_hint(info.value) or "")
    assert is_retryable(info.value) is retryable
    assert stored_refresh_token(tenant, "m365") == refresh


async def test_a_slow_token_endpoint_times_out(tenant: Path, auth: AuthorizationServer) -> None:
    refresh = add_refresh_credential(tenant, auth, "m365", "plant@example.com")
    auth.mode, auth.slow_seconds = "slow", 3
    with pytest.raises(MessagingException) as info:
        await fetch(tenant, timeout=0.5)
    assert render_chain(info.value) == (
        prefix(auth) + f"SocketTimeoutException: no answer from {auth.token_url} within 0.5s"
    )
    assert "did not answer in time; the message is retried" in (find_hint(info.value) or "")
    assert is_retryable(info.value)
    assert stored_refresh_token(tenant, "m365") == refresh


async def test_a_dead_refresh_token_names_the_login_command(
    tenant: Path, auth: AuthorizationServer
) -> None:
    refresh = add_refresh_credential(tenant, auth, "m365", "plant@example.com")
    auth.revoke_refresh_tokens()
    with pytest.raises(AuthenticationFailedException) as info:
        await fetch(tenant)
    assert "HTTP 400 invalid_grant: token expired or revoked" in render_chain(info.value)
    hint = find_hint(info.value) or ""
    assert hint.startswith("the refresh token of credential m365 has expired or was revoked")
    assert "`flowrt credentials oauth2-login m365 --provider custom" in hint
    assert not is_retryable(info.value)
    assert stored_refresh_token(tenant, "m365") == refresh


async def test_a_rotated_token_is_stored_and_a_newer_sign_in_wins(
    tenant: Path, auth: AuthorizationServer
) -> None:
    first = add_refresh_credential(tenant, auth, "m365", "plant@example.com")
    await fetch(tenant)
    second = stored_refresh_token(tenant, "m365")
    assert second != first and second in auth.refresh_tokens()
    # A rotation answered for a token that is no longer the stored one (someone signed in
    # again meanwhile) does not overwrite the newer sign-in.
    s = TenantSecurity.open(Tenant(tenant))
    assert not s.replace_refresh_token("m365", Secret(first), Secret("stale"))
    assert stored_refresh_token(tenant, "m365") == second


async def test_a_token_another_process_rotated_meanwhile_is_picked_up(
    tenant: Path, auth: AuthorizationServer
) -> None:
    add_refresh_credential(tenant, auth, "m365", "plant@example.com")
    old = credential(tenant)
    await fetch(tenant)  # "the other process": rotates and stores
    # this process still holds the old credential object; it reads the store before refreshing
    s = security(tenant)
    token, fresh = await OAuth2Tokens().get(old, tls=s.client_context, timeout=5, store=s)
    assert fresh and token.reveal() in auth.issued


@dataclasses.dataclass
class ReadOnlyStore:
    """A store whose writes fail (a full disk): the rotated token lives on in memory."""

    held: OAuth2RefreshToken
    writes: int = 0

    def credential(self, name: str) -> Credential:
        return self.held

    def replace_refresh_token(self, name: str, used: Secret, new: Secret) -> bool:
        self.writes += 1
        raise OSError(28, "No space left on device")


async def test_a_rotation_that_cannot_be_stored_is_kept_in_memory(
    tenant: Path, auth: AuthorizationServer
) -> None:
    add_refresh_credential(tenant, auth, "m365", "plant@example.com")
    store = ReadOnlyStore(credential(tenant))
    tokens = OAuth2Tokens()
    s = security(tenant)
    for _ in range(2):  # the second refresh needs the rotated token the first one got
        await tokens.get(store.held, tls=s.client_context, timeout=5, store=store, refresh=True)
    assert store.writes == 2 and auth.grants == ["refresh_token", "refresh_token"]


async def test_a_chunked_answer_is_read(tenant: Path) -> None:
    body = json.dumps({"access_token": "chunked-token", "expires_in": 60}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:]))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    from flowrt.security import OAuth2ClientCredentials

    cc = OAuth2ClientCredentials("cc", f"http://127.0.0.1:{port}/t", "id", Secret("s"))
    answer = await request_token(cc, tls=security(tenant).client_context, timeout=5)
    server.close()
    assert answer.access_token.reveal() == "chunked-token" and answer.lifetime == 60


@pytest.fixture
def dante_for(auth: AuthorizationServer) -> Iterator[DanteServer]:
    try:
        server = DanteServer(allow_to=[("127.0.0.1", auth.port)]).start()
    except (ServerUnavailable, ServerStartError) as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


@pytest.mark.servers
async def test_the_token_request_takes_the_socks5_route(
    tenant: Path, auth: AuthorizationServer, dante_for: DanteServer
) -> None:
    add_refresh_credential(tenant, auth, "m365", "plant@example.com")
    s = security(tenant)
    route = ProxyRoute("127.0.0.1", dante_for.port, location="plant-1")
    token, _ = await OAuth2Tokens().get(
        credential(tenant), tls=s.client_context, timeout=5, store=s, route=route
    )
    assert token.reveal() in auth.issued

    # Proof that it went through the proxy: a destination the proxy refuses fails there.
    with edit_credentials(Tenant(tenant)) as store:
        moved = dataclasses.replace(credential(tenant), token_url="http://127.0.0.2:9/token")
        store.put(moved, replace=True)
    with pytest.raises(MessagingException) as info:
        await OAuth2Tokens().get(credential(tenant), tls=s.client_context, timeout=5, route=route)
    assert "SocksException: Connection not allowed by ruleset" in render_chain(info.value)
