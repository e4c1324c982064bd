"""Token requests (RFC 6749): client credentials, refresh token, authorization code, over
httpx, and every way they fail mapped to the MessagingException chain with a hint.

``http://`` is accepted for loopback addresses only: a client secret or a refresh token is
not sent in clear over a network. Whatever the endpoint answers, no secret that went into the
request comes back out in an error text (identity providers like to echo them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import ipaddress
import json
import re
import ssl
import urllib.parse
from collections.abc import Callable

from cryptography import x509

from flowrt.adapters.mail.oauth2.providers import login_command
from flowrt.errors import (
    AuthenticationFailedException,
    IOException,
    MessagingException,
    SocketTimeoutException,
    is_retryable,
)
from flowrt.net import ProxyRoute, open_stream, tls_failure
from flowrt.security import Secret, unverified_context
from flowrt.security.credentials import OAuth2ClientCredentials, OAuth2RefreshToken

_MAX_RESPONSE = 1 << 20
_DEFAULT_LIFETIME = 300.0  # when the endpoint does not say (expires_in is only RECOMMENDED)
_MASK = "********"

TlsSource = Callable[[], ssl.SSLContext]


@dataclasses.dataclass(frozen=True)
class TokenAnswer:
    access_token: Secret
    lifetime: float  # seconds
    refresh_token: Secret | None = None  # a new one when the provider rotates them


@dataclasses.dataclass(frozen=True)
class _Request:
    """One POST to a token endpoint and what its failures should say."""

    name: str  # the credential
    url: str
    form: dict[str, str]
    secrets: tuple[str, ...]  # never shown, even when echoed back
    refused_hint: str  # when the endpoint refuses the client or the grant
    invalid_grant_hint: str | None = None  # when the refresh token (or code) is dead

    @property
    def shown(self) -> str:
        return shown_url(self.url)


async def request_token(
    credential: OAuth2ClientCredentials | OAuth2RefreshToken,
    *,
    tls: TlsSource,
    timeout: float,
    route: ProxyRoute | None = None,
) -> TokenAnswer:
    """A new access token for ``credential``: client-credentials grant (RFC 6749 4.4) or
    refresh-token grant (6); client ID and secret go in the form body, which Microsoft and
    Google accept."""
    form = {"client_id": credential.client_id}
    secrets: list[str] = []
    if credential.client_secret is not None:
        form["client_secret"] = credential.client_secret.reveal()
        secrets.append(form["client_secret"])
    if isinstance(credential, OAuth2RefreshToken):
        form.update(grant_type="refresh_token", refresh_token=credential.refresh_token.reveal())
        secrets.append(form["refresh_token"])
        again = login_command(credential)
        refused = (
            f"the identity provider refused credential {credential.name}; sign in again "
            f"with `{again}`"
        )
        dead = (
            f"the refresh token of credential {credential.name} has expired or was revoked; "
            f"sign in again with `{again}`"
        )
    else:
        form["grant_type"] = "client_credentials"
        refused = (
            f"the identity provider refused credential {credential.name}; check its "
            "client ID, secret, scope and token URL "
            f"(`flowrt credentials show {credential.name}`)"
        )
        dead = None
    if credential.scope:
        form["scope"] = credential.scope
    request = _Request(credential.name, credential.token_url, form, tuple(secrets), refused, dead)
    return await _token(request, tls=tls, timeout=timeout, route=route)


async def exchange_code(
    *,
    name: str,
    token_url: str,
    form: dict[str, str],
    secrets: tuple[str, ...],
    tls: TlsSource,
    timeout: float,
    again: str,
) -> TokenAnswer:
    """The authorization-code grant with PKCE (RFC 6749 4.1, RFC 7636): ``form`` holds
    code, redirect_uri, client_id, code_verifier (and client_secret)."""
    request = _Request(
        name,
        token_url,
        {"grant_type": "authorization_code", **form},
        secrets,
        f"the identity provider refused the sign-in for credential {name}; check the client "
        f"ID, secret and scopes, then run `{again}` again",
        f"the authorization code was refused (used twice, too old, or not for this client); "
        f"run `{again}` again",
    )
    return await _token(request, tls=tls, timeout=timeout, route=None)


# ----------------------------------------------------------------------------- the exchange


async def _token(
    request: _Request, *, tls: TlsSource, timeout: float, route: ProxyRoute | None
) -> TokenAnswer:
    status, content_type, body = await _post(request, tls=tls, timeout=timeout, route=route)
    return _answer(request, status, content_type, body)


def _failed(request: _Request, *, retryable: bool, hint: str | None = None) -> MessagingException:
    return MessagingException(
        f"Could not get an OAuth2 token for credential {request.name} from {request.shown}",
        hint=hint,
        retryable=retryable,
    )


async def _post(
    request: _Request, *, tls: TlsSource, timeout: float, route: ProxyRoute | None
) -> tuple[int, str, bytes]:
    # httpx loads in a tenth of a second: only when a token is needed, not in every CLI start
    import httpx

    from flowrt.adapters.mail.oauth2._transport import RoutedTransport

    url = urllib.parse.urlsplit(request.url)
    host = url.hostname or ""
    https = url.scheme == "https"
    if not host or url.scheme not in ("http", "https"):
        raise MessagingException(
            f"the token URL {request.shown!r} of credential {request.name} is not an http(s) URL",
            hint=f"fix it with `flowrt credentials add {request.name} --replace ...`",
        )
    if not https and not _loopback(host):
        raise MessagingException(
            f"refusing to send the client secret of credential {request.name} in clear to "
            f"{request.shown}",
            hint="use the https:// token URL of the identity provider",
        )
    # http:// (loopback only) never uses the context; don't build one from the keystore.
    context = tls() if https else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    transport = RoutedTransport(tls=context, route=route, timeout=timeout)
    slow = f"no answer from {request.shown} within {timeout:g}s"
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as client,
            client.stream(
                "POST",
                request.url,
                data=request.form,
                headers={"Accept": "application/json", "User-Agent": "flowrt"},
            ) as response,
        ):
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_RESPONSE:
                    raise _failed(request, retryable=False) from IOException(
                        f"the token endpoint sent more than {_MAX_RESPONSE} bytes"
                    )
            return response.status_code, response.headers.get("content-type", ""), bytes(body)
    except IOException as exc:  # from flowrt.net: refused, unknown host, SOCKS
        raise _failed(request, retryable=is_retryable(exc)) from exc
    except ssl.SSLError as exc:
        peer = await _peer_certificate(host, url.port or 443, route, timeout)
        fix = "flowrt keystore add ALIAS ROOT.cer (the identity provider's root certificate)"
        cause = tls_failure(exc, host=host, port=url.port or 443, peer=peer, fix_command=fix)
        cause.__cause__ = exc
        raise _failed(request, retryable=False) from cause
    except (TimeoutError, httpx.TimeoutException):
        hint = (
            f"the token endpoint of credential {request.name} did not answer in time; the "
            "message is retried. If it stays, check the token URL and the network (proxy, "
            "firewall) towards it"
        )
        raise _failed(request, retryable=True, hint=hint) from SocketTimeoutException(slow)
    except httpx.ProtocolError as exc:
        raise _failed(
            request, retryable=True, hint=f"check the token URL of credential {request.name}"
        ) from IOException(f"the token endpoint did not answer with HTTP ({exc})")
    except (httpx.TransportError, ConnectionError, OSError) as exc:
        raise _failed(request, retryable=True) from IOException(
            f"the token endpoint closed the connection: {exc}"
        )


def _answer(request: _Request, status: int, content_type: str, body: bytes) -> TokenAnswer:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if status == 200 and isinstance(document, dict):
        token = document.get("access_token")
        if isinstance(token, str) and token:
            rotated = document.get("refresh_token")
            return TokenAnswer(
                Secret(token),
                _lifetime(document.get("expires_in")),
                Secret(rotated) if isinstance(rotated, str) and rotated else None,
            )
        keys = ", ".join(sorted(str(k) for k in document)) or "nothing"
        raise _failed(
            request,
            retryable=False,
            hint=f"the token URL of credential {request.name} answers, but not as a token "
            "endpoint; check it (`flowrt credentials show "
            f"{request.name}`)",
        ) from IOException(f"HTTP 200 without access_token in the JSON (it has {keys})")
    if not isinstance(document, dict):
        what = _describe_body(content_type, body, request.secrets)
        retry = status == 429 or status >= 500
        raise _failed(
            request,
            retryable=retry,
            hint=(
                "the identity provider has a problem of its own; the message is retried"
                if retry
                else f"the token URL of credential {request.name} does not lead to a token "
                "endpoint (a web page, a proxy's error page?); check it (`flowrt credentials "
                f"show {request.name}`)"
            ),
        ) from IOException(f"HTTP {status} with {what} instead of JSON")
    error = str(document.get("error", "") or "")
    said = f"{error}: {document.get('error_description', '') or ''}".strip(": ")
    said = _scrub(" ".join(said.split()) or "(no error given)", request.secrets)
    text = f"OAuth2 token request to {request.shown} failed: HTTP {status} {said}"
    if status in (400, 401, 403):
        hint = request.refused_hint
        if error == "invalid_grant" and request.invalid_grant_hint:
            hint = request.invalid_grant_hint
        raise AuthenticationFailedException(text, hint=hint, retryable=False)
    retry = status == 429 or status >= 500
    raise MessagingException(
        text,
        hint="the identity provider has a problem of its own; the message is retried"
        if retry
        else None,
        retryable=retry,
    )


def _describe_body(content_type: str, body: bytes, secrets: tuple[str, ...]) -> str:
    media = content_type.split(";")[0].strip().lower() or "no content type"
    if not body.strip():
        return "an empty body"
    text = body[:4096].decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if "html" in media or title:
        shown = html.unescape(" ".join(title.group(1).split()))[:80] if title else ""
        return f"an HTML page{f' ({shown!r})' if shown else ''}"
    first = _scrub(" ".join(text.split())[:80], secrets)
    return f"{media} ({first!r})"


def _lifetime(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _DEFAULT_LIFETIME
    return seconds if seconds > 0 else _DEFAULT_LIFETIME


async def _peer_certificate(
    host: str, port: int, route: ProxyRoute | None, timeout: float
) -> x509.Certificate | None:
    """The endpoint's certificate, read without validation only to name its issuer."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await open_stream(
                host, port, route=route, timeout=timeout, tls=unverified_context()
            )
    except (IOException, OSError, TimeoutError):
        return None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None
    finally:
        writer.close()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shown_url(url: str) -> str:
    """The URL without user info, query or fragment (they may carry secrets)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")
    )


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK)
    return text
