"""Where and how a mail sender connects: the resolved endpoint (address, protection, login,
TLS context, route) and the failures that every protocol maps the same way.

The runtime builds a :class:`MailEndpoint` from a flow's ``sender`` block and the tenant
(:func:`endpoint_from_tenant`); tests build one directly. Secrets stay in
:class:`~flowrt.security.Secret` values until the protocol client puts them on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, Protocol

from cryptography import x509

from flowrt.adapters.mail import errors as mail_errors
from flowrt.adapters.mail.model import Sender
from flowrt.errors import (
    AuthenticationFailedException,
    CredentialError,
    FlowrtError,
    MessagingException,
)
from flowrt.net import ProxyRoute, open_stream, resolve_route, tls_failure
from flowrt.security.secret import Secret

if TYPE_CHECKING:
    from flowrt.adapters.mail.oauth2 import OAuth2Tokens
    from flowrt.security import TenantSecurity


StartTlsDialog = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

NAMES = {"imap": "IMAP", "pop3": "POP3"}


class TokenSource(Protocol):
    """Gives OAuth2 access tokens for XOAUTH2: ``(token, fetched_now)``; ``refresh`` asks for
    a new one (a cached token was refused). :class:`flowrt.adapters.mail.oauth2.TokenSource`
    is one."""

    async def token(self, *, refresh: bool = False) -> tuple[Secret, bool]: ...


class TokenFunction:
    """A :class:`TokenSource` from a plain ``async () -> token`` callable (tests, custom
    providers): every call is a fresh token."""

    def __init__(self, provider: Callable[[], Awaitable[str | Secret]]) -> None:
        self._provider = provider

    async def token(self, *, refresh: bool = False) -> tuple[Secret, bool]:
        value = await self._provider()
        return (value if isinstance(value, Secret) else Secret(value)), True


@dataclasses.dataclass(frozen=True)
class MailLogin:
    """Who logs in: a user with a password, or with an OAuth2 token source."""

    user: str
    password: Secret | None = None
    token: TokenSource | None = None
    credential: str = ""  # its name in the credential store, for hints

    async def access_token(self, *, refresh: bool = False) -> tuple[Secret, bool]:
        if self.token is None:
            raise AuthenticationFailedException(
                f"auth oauth2 needs an access token, but credential '{self.credential}' gives none",
                hint="use an oauth2-client-credentials or oauth2-refresh-token credential for "
                "auth oauth2",
            )
        return await self.token.token(refresh=refresh)

    def hint_when_refused(self) -> str:
        """What to check when the server refuses this login."""
        refused = getattr(self.token, "refused_hint", None)
        if isinstance(refused, str):
            return refused
        return f"check credential {self.credential!r} (`flowrt credentials show {self.credential}`)"


@dataclasses.dataclass(frozen=True)
class MailEndpoint:
    """A mailbox server as the sender reaches it."""

    protocol: Literal["imap", "pop3"]
    host: str
    port: int
    protection: str  # off, starttls-mandatory, starttls-optional, imaps, pop3s
    auth: Literal["plain", "encrypted", "oauth2"]
    login: MailLogin
    tls: ssl.SSLContext | None = None  # verifying context; required unless protection off
    route: ProxyRoute | None = None
    timeout: float = 30.0
    allow_plaintext_auth: bool = False

    @classmethod
    def for_sender(
        cls,
        sender: Sender,
        *,
        login: MailLogin,
        tls: ssl.SSLContext | None,
        route: ProxyRoute | None = None,
    ) -> MailEndpoint:
        c = sender.connection
        if c.auth.method == "none":
            raise MessagingException("a mail sender needs a login (auth none is not possible)")
        return cls(
            protocol=sender.protocol,
            host=c.address.host,
            port=c.address.port,
            protection=c.protection,
            auth=c.auth.method,
            login=login,
            tls=tls,
            route=route,
            timeout=c.timeout.total_seconds(),
            allow_plaintext_auth=c.allow_plaintext_auth,
        )

    @property
    def name(self) -> str:
        return NAMES[self.protocol]

    @property
    def implicit_tls(self) -> bool:
        return self.protection in ("imaps", "pop3s")

    @property
    def starttls(self) -> bool:
        return self.protection.startswith("starttls")

    def context(self) -> ssl.SSLContext:
        if self.tls is None:
            raise MessagingException(
                f"protection {self.protection} needs a TLS context, and none was given"
            )
        return self.tls

    def describe(self) -> str:
        via = f" via {self.route.describe()}" if self.route else ""
        return f"{self.protocol} {self.login.user}@{self.host}:{self.port}{via}"

    @property
    def connect_text(self) -> str:
        """The JavaMail wording operators know from the platform (ends with ``;``)."""
        return mail_errors.connect_text(self.protocol, self.host, self.port)

    @property
    def fix_command(self) -> str:
        """The connectivity test that imports the server's chain, over the flow's route."""
        via = ""
        if self.route is not None and self.route.location:
            via = f" --proxy on-premise --location {self.route.location}"
        return (
            f"flowrt test {self.protocol} {self.host}:{self.port} "
            f"--protection {self.protection}{via} --import"
        )

    def credential_hint(self) -> str:
        name = self.login.credential or "NAME"
        if self.auth == "oauth2":
            return self.login.hint_when_refused()
        return (
            f"check the user and password of credential '{name}' (user {self.login.user}); "
            f"change them with `flowrt credentials add {name} --user USER --password-stdin "
            "--replace`"
        )


# ----------------------------------------------------------------------------- failures


def connect_failure(endpoint: MailEndpoint, exc: FlowrtError) -> MessagingException:
    """``MessagingException: Could not connect to IMAP host: h, port: p;`` over a cause from
    :mod:`flowrt.net`; as retryable as its cause (a refused SOCKS rule does not heal)."""
    return mail_errors.could_not_connect(endpoint.protocol, endpoint.host, endpoint.port, exc)


def tls_error(
    endpoint: MailEndpoint, exc: ssl.SSLError | ConnectionError, peer: x509.Certificate | None
) -> MessagingException:
    """The chain for a failed handshake: MessagingException over SSLHandshakeException (with
    the fix command as hint) over the ssl error."""
    cause = tls_failure(
        exc, host=endpoint.host, port=endpoint.port, peer=peer, fix_command=endpoint.fix_command
    )
    cause.__cause__ = exc
    return mail_errors.could_not_connect(endpoint.protocol, endpoint.host, endpoint.port, cause)


async def peer_certificate(
    endpoint: MailEndpoint, dialog: StartTlsDialog | None
) -> x509.Certificate | None:
    """The server's certificate, read on a second connection without validation, only to
    name its issuer in the error. ``dialog`` does the plaintext part before STARTTLS."""
    from flowrt.security.tls import unverified_context

    try:
        async with asyncio.timeout(endpoint.timeout):
            implicit = unverified_context() if endpoint.implicit_tls else None
            reader, writer = await open_stream(
                endpoint.host,
                endpoint.port,
                route=endpoint.route,
                timeout=endpoint.timeout,
                tls=implicit,
            )
            try:
                if implicit is None and dialog is not None:
                    await dialog(reader, writer)
                    await writer.start_tls(unverified_context(), server_hostname=endpoint.host)
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                return x509.load_der_x509_certificate(der) if der else None
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (FlowrtError, OSError, ssl.SSLError, ValueError, TimeoutError, EOFError):
        return None


def keepalive(sock: socket.socket) -> None:
    """TCP keepalive: a dead peer behind an idle (IDLE) connection shows up within about two
    minutes, even before the next IDLE refresh; bounded timeouts cover the rest."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


# ----------------------------------------------------------------------------- from a tenant


def endpoint_from_tenant(
    sender: Sender,
    security: TenantSecurity,
    *,
    tokens: OAuth2Tokens | None = None,
    oauth2_user: str | None = None,
) -> MailEndpoint:
    """Resolve a sender's credential, TLS context (tenant keystore only) and route.

    ``auth oauth2`` takes an oauth2-client-credentials credential (its grant names no
    mailbox, so the login is ``oauth2_user``, the flow's ``user``) or an oauth2-refresh-token
    one (``oauth2_user``, else the mailbox it was signed in for). The token request takes
    the sender's route. ``tokens`` shares cached tokens between pollers and receivers.
    """
    from flowrt.adapters.mail.oauth2 import OAuth2Tokens
    from flowrt.security.credentials import (
        OAuth2ClientCredentials,
        OAuth2RefreshToken,
        UserCredential,
    )

    c = sender.connection
    name = c.auth.credential or ""
    credential = security.credential(name)
    route = resolve_route(
        c.proxy, locations=security.locations(), credentials=security.credentials()
    )
    if c.auth.method == "oauth2":
        if not isinstance(credential, OAuth2ClientCredentials | OAuth2RefreshToken):
            raise CredentialError(
                f"auth oauth2 needs an oauth2-client-credentials or oauth2-refresh-token "
                f"credential, but '{name}' is of kind {credential.kind}"
            )
        user = oauth2_user or getattr(credential, "user", None)
        if not user:
            raise CredentialError(
                f"auth oauth2 with credential '{name}': the client-credentials grant names no "
                "mailbox, and no mailbox address was given to log in as"
            )
        source = (tokens or OAuth2Tokens()).source(
            credential,
            tls=security.client_context,
            timeout=c.timeout.total_seconds(),
            route=route,
            store=security,
        )
        login = MailLogin(user, None, source, name)
    elif isinstance(credential, UserCredential):
        login = MailLogin(credential.user, credential.password, None, name)
    else:
        raise CredentialError(
            f"auth {c.auth.method} needs a user credential (user and password), but '{name}' "
            f"is of kind {credential.kind}"
        )
    tls = security.client_context() if c.protection != "off" else None
    return MailEndpoint.for_sender(sender, login=login, tls=tls, route=route)
