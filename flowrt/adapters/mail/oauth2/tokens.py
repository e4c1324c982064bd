"""Access tokens per credential, cached until shortly before they expire, so that a busy flow
asks the token endpoint once an hour rather than once per mail; concurrent logins share one
request.

A refresh-token credential is read from the tenant store before each refresh (another
process may have rotated it), and a rotated refresh token is written back at once, locked and
atomically, before the access token is used: a crash cannot lose it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from flowrt.adapters.mail.oauth2.grants import request_token, shown_url
from flowrt.adapters.mail.oauth2.providers import login_command
from flowrt.errors import AuthenticationFailedException, FlowrtError
from flowrt.net import ProxyRoute
from flowrt.security import Secret
from flowrt.security.credentials import Credential, OAuth2ClientCredentials, OAuth2RefreshToken

log = structlog.get_logger("flowrt.oauth2")

OAuth2Credential = OAuth2ClientCredentials | OAuth2RefreshToken


class RefreshTokenStore(Protocol):
    """Where refresh tokens live (:class:`flowrt.security.TenantSecurity` is one)."""

    def credential(self, name: str) -> Credential: ...

    def replace_refresh_token(self, name: str, used: Secret, new: Secret) -> bool: ...


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
        # rotated refresh tokens that could not be stored: (the stored one, its successor)
        self._unsaved: dict[str, tuple[Secret, Secret]] = {}

    def source(
        self,
        credential: OAuth2Credential,
        *,
        tls: Callable[[], ssl.SSLContext],
        timeout: float,
        route: ProxyRoute | None = None,
        store: RefreshTokenStore | None = None,
    ) -> TokenSource:
        """The tokens of ``credential``, as a session's login asks for them. ``route`` is
        the mail connection's (the token request takes the same way); ``store`` keeps
        rotated refresh tokens."""
        return TokenSource(self, credential, tls, timeout, route, store)

    async def get(
        self,
        credential: OAuth2Credential,
        *,
        tls: Callable[[], ssl.SSLContext],
        timeout: float,
        refresh: bool = False,
        route: ProxyRoute | None = None,
        store: RefreshTokenStore | None = None,
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
            if isinstance(credential, OAuth2RefreshToken):
                token, lifetime = await self._refresh(credential, tls, timeout, route, store)
            else:
                answer = await request_token(credential, tls=tls, timeout=timeout, route=route)
                token, lifetime = answer.access_token, answer.lifetime
            self.fetches += 1
            early = min(self.margin, lifetime / 10)
            self._cache[key] = _Cached(token, self.clock() + lifetime - early)
            log.debug(
                "oauth2.token_fetched",
                credential=credential.name,
                token_url=shown_url(credential.token_url),
                lifetime=lifetime,
            )
            return token, True

    def invalidate(self, credential: OAuth2Credential) -> None:
        self._cache.pop(_key(credential), None)

    async def _refresh(
        self,
        credential: OAuth2RefreshToken,
        tls: Callable[[], ssl.SSLContext],
        timeout: float,
        route: ProxyRoute | None,
        store: RefreshTokenStore | None,
    ) -> tuple[Secret, float]:
        current = self._current(credential, store)
        try:
            answer = await request_token(current, tls=tls, timeout=timeout, route=route)
        except AuthenticationFailedException:
            # Another process (a second node, `flowrt test`) may have rotated the token
            # between our read and our request: one more try with what is stored now.
            latest = self._current(credential, store)
            if latest.refresh_token == current.refresh_token:
                raise
            current = latest
            answer = await request_token(current, tls=tls, timeout=timeout, route=route)
        rotated = answer.refresh_token
        if rotated is not None and rotated != current.refresh_token:
            await self._keep(current, rotated, store)
        return answer.access_token, answer.lifetime

    def _current(
        self, credential: OAuth2RefreshToken, store: RefreshTokenStore | None
    ) -> OAuth2RefreshToken:
        latest = credential
        if store is not None:
            stored = store.credential(credential.name)
            # the stored one is the latest sign-in or rotation, whoever made it
            if isinstance(stored, OAuth2RefreshToken):
                latest = stored
        unsaved = self._unsaved.get(credential.name)
        if unsaved is not None and unsaved[0] == latest.refresh_token:
            return dataclasses.replace(latest, refresh_token=unsaved[1])
        return latest

    async def _keep(
        self, used: OAuth2RefreshToken, rotated: Secret, store: RefreshTokenStore | None
    ) -> None:
        name = used.name
        stored_before = self._unsaved.get(name, (used.refresh_token,))[0]
        if store is not None:
            try:
                replaced = await asyncio.to_thread(
                    store.replace_refresh_token, name, stored_before, rotated
                )
            except (FlowrtError, OSError) as exc:
                log.error(
                    "oauth2.refresh_token_not_stored",
                    credential=name,
                    error=str(exc),
                    hint="the rotated refresh token is kept in memory until the store can "
                    f"be written; if this process ends first, run `{login_command(used)}`",
                )
            else:
                self._unsaved.pop(name, None)
                log.info("oauth2.refresh_token_rotated", credential=name, stored=replaced)
                return
        self._unsaved[name] = (stored_before, rotated)


class TokenSource:
    """One credential's tokens, bound to the TLS trust, route and timeout of a connection."""

    __slots__ = ("_credential", "_route", "_store", "_timeout", "_tls", "_tokens")

    def __init__(
        self,
        tokens: OAuth2Tokens,
        credential: OAuth2Credential,
        tls: Callable[[], ssl.SSLContext],
        timeout: float,
        route: ProxyRoute | None = None,
        store: RefreshTokenStore | None = None,
    ) -> None:
        self._tokens = tokens
        self._credential = credential
        self._tls = tls
        self._timeout = timeout
        self._route = route
        self._store = store

    async def token(self, *, refresh: bool = False) -> tuple[Secret, bool]:
        return await self._tokens.get(
            self._credential,
            tls=self._tls,
            timeout=self._timeout,
            refresh=refresh,
            route=self._route,
            store=self._store,
        )

    @property
    def refused_hint(self) -> str:
        """What to do when the mail server refuses a fresh token of this credential."""
        c = self._credential
        if isinstance(c, OAuth2RefreshToken):
            return (
                f"the token of credential {c.name} is valid for the identity provider but not "
                f"for this mailbox: check the user and the scopes ({c.scope or 'none'}); "
                f"sign in again with `{login_command(c)}`"
            )
        return (
            f"check the client ID, secret and scope in credential {c.name} "
            f"(`flowrt credentials show {c.name}`)"
        )

    def __repr__(self) -> str:
        return f"TokenSource({self._credential.name!r})"


def _key(credential: OAuth2Credential) -> tuple[Any, ...]:
    # ``changed`` moves when the credential is replaced (a new secret, a new sign-in), so a
    # new credential gets a new token; a rotated refresh token keeps it.
    return (
        credential.kind,
        credential.name,
        credential.token_url,
        credential.client_id,
        credential.scope,
        credential.changed,
    )
