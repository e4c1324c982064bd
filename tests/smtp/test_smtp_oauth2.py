"""auth oauth2: client-credentials token from a local endpoint, cached, and XOAUTH2."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from flowrt.adapters.mail.oauth2 import OAuth2Tokens
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import (
    AuthenticationFailedException,
    MessagingException,
    find_hint,
    is_retryable,
    render_chain,
)
from flowrt.security import OAuth2ClientCredentials, Secret
from tests.servers import ScriptedSMTPServer, ServerCert
from tests.smtp.conftest import (
    CLIENT_SECRET,
    USER,
    TestTenant,
    TokenEndpoint,
    XOAuth2Server,
    make_receiver,
)

Start = Callable[..., ScriptedSMTPServer]


def mail(i: int = 0) -> Exchange:
    return Exchange(body=b"token mail\n", headers=Headers([("Subject", f"oauth {i}")]))


def receiver_for(
    tenant: TestTenant, server: XOAuth2Server, tokens: OAuth2Tokens | None = None
) -> SmtpReceiver:
    receiver = make_receiver(
        address=f'"127.0.0.1:{server.port}"',
        auth='oauth2 credential "m365"',
    )
    return SmtpReceiver(receiver, tenant.security, tokens=tokens)


@pytest.fixture
def oauth_tenant(tenant: TestTenant, token_endpoint: TokenEndpoint) -> TestTenant:
    tenant.add_oauth2("m365", token_endpoint.url, scope="https://outlook.office365.com/.default")
    return tenant


async def test_token_is_fetched_once_and_used_for_xoauth2(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint, xoauth2_server: XOAuth2Server
) -> None:
    token_endpoint.on_token = xoauth2_server.valid_tokens.add
    tokens = OAuth2Tokens()
    for _ in range(2):  # two receivers, e.g. two flows: the tokens object is shared
        async with receiver_for(oauth_tenant, xoauth2_server, tokens) as smtp:
            await smtp.deliver(mail())
    assert tokens.fetches == 1
    (form,) = token_endpoint.requests
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "flowrt-client",
        "client_secret": CLIENT_SECRET,
        "scope": "https://outlook.office365.com/.default",
    }
    assert xoauth2_server.attempts == [(USER, "ya29.test-token-1")] * 2
    assert [user for user, _ in xoauth2_server.received] == [USER, USER]


async def test_concurrent_first_deliveries_share_one_token_request(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint, xoauth2_server: XOAuth2Server
) -> None:
    token_endpoint.on_token = xoauth2_server.valid_tokens.add
    async with receiver_for(oauth_tenant, xoauth2_server) as smtp:
        await asyncio.gather(*(smtp.deliver(mail(i)) for i in range(4)))
    assert len(token_endpoint.requests) == 1
    assert len(xoauth2_server.received) == 4


async def test_token_is_fetched_again_shortly_before_it_expires(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint
) -> None:
    now = [1000.0]
    tokens = OAuth2Tokens(margin=60, clock=lambda: now[0])
    credential = oauth_tenant.security.credential("m365")
    assert isinstance(credential, OAuth2ClientCredentials)
    source = tokens.source(credential, tls=oauth_tenant.security.client_context, timeout=5)
    first, fresh = await source.token()
    assert fresh and first.reveal() == "ya29.test-token-1"
    now[0] += 3600 - 61  # one second before "a minute before it expires"
    assert (await source.token()) == (first, False)
    now[0] += 2
    second, fresh = await source.token()
    assert fresh and second.reveal() == "ya29.test-token-2"
    assert tokens.fetches == 2


async def test_short_lived_tokens_are_still_reused(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint
) -> None:
    token_endpoint.expires_in = 30  # renewed a tenth of its life early: after 27s, not never
    now = [0.0]
    tokens = OAuth2Tokens(margin=60, clock=lambda: now[0])
    credential = oauth_tenant.security.credential("m365")
    assert isinstance(credential, OAuth2ClientCredentials)
    source = tokens.source(credential, tls=oauth_tenant.security.client_context, timeout=5)
    await source.token()
    now[0] = 26.9
    assert (await source.token())[1] is False
    now[0] = 27.1
    assert (await source.token())[1] is True


async def test_a_refused_cached_token_is_replaced_once(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint, xoauth2_server: XOAuth2Server
) -> None:
    token_endpoint.on_token = xoauth2_server.valid_tokens.add
    tokens = OAuth2Tokens()
    async with receiver_for(oauth_tenant, xoauth2_server, tokens) as smtp:
        await smtp.deliver(mail(1))
    xoauth2_server.valid_tokens.clear()  # revoked before its time
    token_endpoint.on_token = xoauth2_server.valid_tokens.add
    async with receiver_for(oauth_tenant, xoauth2_server, tokens) as smtp:
        report = await smtp.deliver(mail(2))
    assert report.accepted == ("accounting@example.com",)
    assert [token for _, token in xoauth2_server.attempts] == [
        "ya29.test-token-1",
        "ya29.test-token-1",
        "ya29.test-token-2",
    ]


async def test_a_refused_fresh_token_is_an_authentication_failure(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint, xoauth2_server: XOAuth2Server
) -> None:
    async with receiver_for(oauth_tenant, xoauth2_server) as smtp:
        with pytest.raises(AuthenticationFailedException) as info:
            await smtp.deliver(mail())
    assert render_chain(info.value) == (
        "AuthenticationFailedException: 535 5.7.8 Username and Password not accepted"
    )
    assert "client ID, secret and scope in credential m365" in (find_hint(info.value) or "")
    assert len(token_endpoint.requests) == 1  # no loop of token requests


async def test_token_endpoint_refusing_the_client(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint, xoauth2_server: XOAuth2Server
) -> None:
    token_endpoint.status = 401
    token_endpoint.error = {
        "error": "invalid_client",
        "error_description": f"AADSTS7000215: Invalid client secret {CLIENT_SECRET} provided.",
    }
    async with receiver_for(oauth_tenant, xoauth2_server) as smtp:
        with pytest.raises(AuthenticationFailedException) as info:
            await smtp.deliver(mail())
    text = render_chain(info.value)
    assert text == (
        f"AuthenticationFailedException: OAuth2 token request to {token_endpoint.url} failed: "
        "HTTP 401 invalid_client: AADSTS7000215: Invalid client secret ******** provided."
    )
    assert CLIENT_SECRET not in text  # even when the endpoint echoes it
    assert "flowrt credentials show m365" in (find_hint(info.value) or "")
    assert not is_retryable(info.value)
    assert xoauth2_server.attempts == []


async def test_token_endpoint_down_is_retryable(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint, xoauth2_server: XOAuth2Server
) -> None:
    token_endpoint.stop()
    async with receiver_for(oauth_tenant, xoauth2_server) as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert render_chain(info.value).startswith(
        f"MessagingException: Could not get an OAuth2 token for credential m365 from "
        f"{token_endpoint.url}\n  nested exception is:\n\tConnectException: Connection refused"
    )
    assert is_retryable(info.value)


async def test_client_secret_is_not_sent_over_http_to_a_remote_host(
    oauth_tenant: TestTenant,
) -> None:
    credential = OAuth2ClientCredentials(
        "remote", "http://login.example.com/token", "id", Secret(CLIENT_SECRET)
    )
    with pytest.raises(MessagingException) as info:
        await OAuth2Tokens().get(credential, tls=oauth_tenant.security.client_context, timeout=5)
    assert "refusing to send the client secret of credential remote in clear" in str(info.value)


async def test_oauth2_over_a_clear_link_is_refused(
    oauth_tenant: TestTenant, token_endpoint: TokenEndpoint, scripted: Start
) -> None:
    server = scripted()  # no STARTTLS offered: a bearer token is as good as a password
    receiver = make_receiver(
        address=f'"127.0.0.1:{server.port}"',
        protection="starttls-optional",
        auth='oauth2 credential "m365"',
    )
    async with SmtpReceiver(receiver, oauth_tenant.security) as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert info.value.message.startswith(
        "refusing to send the OAuth2 token of credential 'm365' in clear"
    )
    assert token_endpoint.requests == []  # refused before a token was even asked for


@pytest.fixture
def https_endpoint(server_cert: ServerCert) -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint(server_cert).start()
    yield endpoint
    endpoint.stop()


async def test_https_token_endpoint_is_trusted_through_the_keystore_only(
    tenant: TestTenant, bare_tenant_factory: Callable[[], TestTenant], https_endpoint: TokenEndpoint
) -> None:
    tenant.add_oauth2("m365", https_endpoint.url)
    credential = tenant.security.credential("m365")
    assert isinstance(credential, OAuth2ClientCredentials)
    token, fresh = await OAuth2Tokens().get(
        credential, tls=tenant.security.client_context, timeout=5
    )
    assert fresh and token.reveal() == "ya29.test-token-1"

    untrusting = bare_tenant_factory()  # same credential, a keystore without the test CA
    with pytest.raises(MessagingException) as info:
        await OAuth2Tokens().get(credential, tls=untrusting.security.client_context, timeout=5)
    chain = render_chain(info.value)
    assert "SSLHandshakeException: PKIX path building failed" in chain
    assert "issued by CN=flowrt Test Intermediate CA" in chain
    assert not is_retryable(info.value)
