"""OAuth 2.0 access tokens for XOAUTH2: the client-credentials grant, cached per credential.

``auth oauth2 credential "NAME"`` names an ``oauth2-client-credentials`` credential (token
URL, client ID, client secret, scope). The token is fetched with a client-credentials grant
(RFC 6749 4.4; client ID and secret in the form body, which Microsoft and Google accept) and
kept until shortly before it expires, so that a busy flow asks the token endpoint once an
hour rather than once per mail; concurrent deliveries share one request.

The request is plain HTTP/1.1 written by hand over :func:`flowrt.net.open_stream`, so that it
goes through the same connection layer, timeouts and TLS trust (the tenant keystore) as
everything else, with no new dependency. ``http://`` is accepted for loopback addresses only:
the client secret is not sent in clear over a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import structlog
from cryptography import x509

from flowrt.errors import (
    AuthenticationFailedException,
    IOException,
    MessagingException,
    SocketTimeoutException,
)
from flowrt.net import open_stream, tls_failure
from flowrt.security import OAuth2ClientCredentials, Secret, unverified_context

log = structlog.get_logger("flowrt.smtp")

_MAX_RESPONSE = 1 << 20
_DEFAULT_LIFETIME = 300.0  # when the endpoint does not say (expires_in is only RECOMMENDED)
_MASK = "********"


@dataclasses.dataclass(frozen=True)
class _Cached:
    token: Secret
    use_until: float  # on the tokens' clock


class OAuth2Tokens:
    """Access tokens per credential, reused until ``margin`` before they expire (at most a
    tenth of their lifetime early, so short-lived tokens are still reused)."""

    def __init__(
        self, *, margin: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.margin = margin
        self.clock = clock
        self.fetches = 0
        self._cache: dict[tuple[Any, ...], _Cached] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}

    def source(
        self,
        credential: OAuth2ClientCredentials,
        *,
        tls: Callable[[], ssl.SSLContext],
        timeout: float,
    ) -> TokenSource:
        """The tokens of ``credential``, as a session's login asks for them."""
        return TokenSource(self, credential, tls, timeout)

    async def get(
        self,
        credential: OAuth2ClientCredentials,
        *,
        tls: Callable[[], ssl.SSLContext],
        timeout: float,
        refresh: bool = False,
    ) -> tuple[Secret, bool]:
        """(token, fetched now). ``refresh`` drops a cached token first (it was refused)."""
        key = _key(credential)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if refresh or (cached is not None and cached.use_until <= self.clock()):
                self._cache.pop(key, None)
                cached = None
            if cached is not None:
                return cached.token, False
            token, lifetime = await request_token(credential, tls=tls, timeout=timeout)
            self.fetches += 1
            early = min(self.margin, lifetime / 10)
            self._cache[key] = _Cached(token, self.clock() + lifetime - early)
            log.debug(
                "smtp.oauth2_token_fetched",
                credential=credential.name,
                token_url=_shown_url(credential.token_url),
                lifetime=lifetime,
            )
            return token, True

    def invalidate(self, credential: OAuth2ClientCredentials) -> None:
        self._cache.pop(_key(credential), None)


class TokenSource:
    """One credential's tokens, bound to the TLS trust and timeout of a receiver."""

    __slots__ = ("_credential", "_timeout", "_tls", "_tokens")

    def __init__(
        self,
        tokens: OAuth2Tokens,
        credential: OAuth2ClientCredentials,
        tls: Callable[[], ssl.SSLContext],
        timeout: float,
    ) -> None:
        self._tokens = tokens
        self._credential = credential
        self._tls = tls
        self._timeout = timeout

    async def token(self, *, refresh: bool = False) -> tuple[Secret, bool]:
        return await self._tokens.get(
            self._credential, tls=self._tls, timeout=self._timeout, refresh=refresh
        )

    def __repr__(self) -> str:
        return f"TokenSource({self._credential.name!r})"


def _key(credential: OAuth2ClientCredentials) -> tuple[Any, ...]:
    # ``changed`` moves when the credential is replaced, so a new secret gets a new token.
    return (
        credential.name,
        credential.token_url,
        credential.client_id,
        credential.scope,
        credential.changed,
    )


# ----------------------------------------------------------------------------- the request


async def request_token(
    credential: OAuth2ClientCredentials,
    *,
    tls: Callable[[], ssl.SSLContext],
    timeout: float,
) -> tuple[Secret, float]:
    """One client-credentials grant: (access token, lifetime in seconds)."""
    url = urllib.parse.urlsplit(credential.token_url)
    host = url.hostname or ""
    https = url.scheme == "https"
    shown = _shown_url(credential.token_url)
    if not host or url.scheme not in ("http", "https"):
        raise MessagingException(
            f"the token URL {shown!r} of credential {credential.name} is not an http(s) URL",
            hint=f"fix it with `flowrt credentials add {credential.name} --replace ...`",
        )
    if not https and not _loopback(host):
        raise MessagingException(
            f"refusing to send the client secret of credential {credential.name} in clear to "
            f"{shown}",
            hint="use the https:// token URL of the identity provider",
        )
    port = url.port or (443 if https else 80)
    fields = {
        "grant_type": "client_credentials",
        "client_id": credential.client_id,
        "client_secret": credential.client_secret.reveal(),
    }
    if credential.scope:
        fields["scope"] = credential.scope
    body = urllib.parse.urlencode(fields).encode("ascii")
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    head = (
        f"POST {target} HTTP/1.1\r\n"
        f"Host: {url.netloc.rpartition('@')[2]}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Accept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "User-Agent: flowrt\r\n\r\n"
    ).encode("ascii")
    context = tls() if https else None
    failed = MessagingException(
        f"Could not get an OAuth2 token for credential {credential.name} from {shown}",
        retryable=True,
    )
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await open_stream(host, port, route=None, timeout=timeout, tls=context)
            try:
                writer.write(head + body)
                await writer.drain()
                raw = await _read_response(reader)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except IOException as exc:
        raise failed from exc
    except ssl.SSLError as exc:
        peer = await _peer_certificate(host, port, timeout)
        fix = "flowrt keystore add ALIAS ROOT.cer (the identity provider's root certificate)"
        cause = tls_failure(exc, host=host, port=port, peer=peer, fix_command=fix)
        cause.__cause__ = exc
        failed.retryable = False
        raise failed from cause
    except TimeoutError:
        raise failed from SocketTimeoutException(f"no answer from {shown} within {timeout:g}s")
    except ConnectionError as exc:
        raise failed from IOException(f"the token endpoint closed the connection: {exc}")
    status, payload = _parse_http(raw, shown)
    secret = credential.client_secret.reveal()
    return _token_from(status, payload, credential, shown, secret)


def _token_from(
    status: int,
    payload: bytes,
    credential: OAuth2ClientCredentials,
    shown: str,
    secret: str,
) -> tuple[Secret, float]:
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if status == 200 and isinstance(document, dict):
        token = document.get("access_token")
        if isinstance(token, str) and token:
            lifetime = _lifetime(document.get("expires_in"))
            return Secret(token), lifetime
    if isinstance(document, dict) and "error" in document:
        said = f"{document.get('error')}: {document.get('error_description', '')}".strip(": ")
    else:
        said = payload[:200].decode("utf-8", "replace").strip() or "(empty response)"
    said = _scrub(" ".join(said.split()), secret)
    text = f"OAuth2 token request to {shown} failed: HTTP {status} {said}"
    if status == 200:
        raise MessagingException(
            f"OAuth2 token endpoint {shown} answered without an access token", retryable=False
        )
    if status in (400, 401, 403):
        raise AuthenticationFailedException(
            text,
            hint=f"the identity provider refused credential {credential.name}; check its "
            "client ID, secret, scope and token URL "
            f"(`flowrt credentials show {credential.name}`)",
            retryable=False,
        )
    raise MessagingException(text, retryable=status == 429 or status >= 500)


def _lifetime(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _DEFAULT_LIFETIME
    return seconds if seconds > 0 else _DEFAULT_LIFETIME


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """Up to EOF, or as soon as the body is complete (not every server closes promptly)."""
    buffer = bytearray()
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return bytes(buffer)
        buffer += chunk
        if len(buffer) > _MAX_RESPONSE:
            raise IOException(f"the token endpoint sent more than {_MAX_RESPONSE} bytes")
        if _complete(buffer):
            return bytes(buffer)


def _complete(buffer: bytearray) -> bool:
    head, sep, rest = bytes(buffer).partition(b"\r\n\r\n")
    if not sep:
        return False
    headers = _headers(head)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return rest.endswith(b"0\r\n\r\n")
    length = headers.get("content-length")
    return length is not None and length.isdigit() and len(rest) >= int(length)


def _headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers


def _parse_http(raw: bytes, shown: str) -> tuple[int, bytes]:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise MessagingException(
            f"the OAuth2 token endpoint {shown} did not answer with HTTP",
            hint="check the token URL of the credential",
            retryable=True,
        )
    headers = _headers(head)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(rest)
    elif headers.get("content-length", "").isdigit():
        body = rest[: int(headers["content-length"])]
    else:
        body = rest
    return int(status_line[1]), body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            return bytes(out)
        size = int(data[position:end].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        position = end + 2 + size + 2


async def _peer_certificate(host: str, port: int, timeout: float) -> x509.Certificate | None:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await open_stream(
                host, port, route=None, timeout=timeout, tls=unverified_context()
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


def _shown_url(url: str) -> str:
    """The URL without user info, query or fragment (they may carry secrets)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")
    )


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, _MASK) if secret else text
