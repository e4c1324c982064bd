"""``receiver mail``: send the message as a mail over SMTP.

The public surface is small::

    receiver = SmtpReceiver(flow.receiver("accounting"), security)   # once per deployed flow
    report = await receiver.deliver(exchange)                         # per message
    await receiver.aclose()                                           # at undeploy / shutdown

``security`` is anything with the accessors of :class:`flowrt.security.TenantSecurity`
(:class:`SmtpResources`): the keystore for TLS trust (and S/MIME), the credential store for
the login, the locations for ``proxy on-premise``. They are asked per delivery, so a changed
keystore or credential takes effect without a redeploy.

``deliver`` composes the mail once (:class:`~flowrt.adapters.mail.mime.compose.MailComposer`,
which also rejects CR/LF in header values), takes a session from the pool (or opens one:
:mod:`~flowrt.adapters.mail.smtp.session`), runs one transaction
(:mod:`~flowrt.adapters.mail.smtp.transaction`) and returns a :class:`DeliveryReport` for the
MPL. Failures are raised as the chain of :mod:`flowrt.errors` with a hint; see
:mod:`~flowrt.adapters.mail.smtp.errors` for the texts.

Sending semantics:

* all recipients refused: ``SendFailedException``, retryable when every refusal was 4xx;
* some refused: the mail is sent to the others, then ``SendFailedException`` (invalid,
  valid-sent, replies) that is *not* retryable, since a retry would send it twice;
* connection lost before the server confirmed the data: tried once more on a fresh
  connection with the same bytes, then a retryable ``MailConnectException``. (A connection
  lost after the server took the data but before its reply cannot be told apart; the one
  retry then delivers twice, which is what every SMTP client does, rather than lose mail.)
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from flowrt.adapters.mail.mime.compose import MailComposer
from flowrt.adapters.mail.model import Receiver
from flowrt.adapters.mail.oauth2 import OAuth2Tokens
from flowrt.adapters.mail.smtp.data import Message, message_bytes
from flowrt.adapters.mail.smtp.errors import (
    couldnt_connect,
    some_recipients_pending,
    some_recipients_refused,
)
from flowrt.adapters.mail.smtp.pool import PoolKey, SmtpPool
from flowrt.adapters.mail.smtp.session import Login, SmtpSession, local_hostname, open_session
from flowrt.adapters.mail.smtp.target import SmtpTarget
from flowrt.adapters.mail.smtp.transaction import TransactionResult, send_transaction
from flowrt.engine.exchange import Exchange
from flowrt.errors import (
    ConnectorError,
    FlowrtError,
    MailConnectException,
    MessagingException,
    ProcessingError,
    SecurityError,
    SendFailedException,
    SocksException,
    library_cause,
)
from flowrt.net import ProxyRoute, resolve_route
from flowrt.recipients import LEDGER, SENT, RecipientLedger, state_of
from flowrt.security import (
    Credential,
    CredentialStore,
    Keystore,
    Locations,
    OAuth2ClientCredentials,
    OAuth2RefreshToken,
    TenantSecurity,
    UserCredential,
    client_context,
)

__all__ = ["ComposedMail", "Composer", "DeliveryReport", "SmtpReceiver", "SmtpResources"]

log = structlog.get_logger("flowrt.smtp")

_ATTEMPTS = 2  # the first try, and one on a fresh connection when the first was lost


class SmtpResources(Protocol):
    """What the receiver takes from the tenant; :class:`~flowrt.security.TenantSecurity`."""

    def keystore(self) -> Keystore: ...

    def credentials(self) -> CredentialStore: ...

    def credential(self, name: str) -> Credential: ...

    def locations(self) -> Locations: ...


class ComposedMail(Protocol):
    """A mail ready to send (``mime_out.OutgoingMail``): envelope and serialized bytes."""

    @property
    def sender(self) -> str: ...

    @property
    def recipients(self) -> Sequence[str]: ...

    @property
    def data(self) -> bytes: ...


def message_of(mail: ComposedMail) -> Message:
    """What DATA sends: a composer's pieces (encoded as they are written), else its bytes."""
    message: Message | None = getattr(mail, "message", None)
    return mail.data if message is None else message


class Composer(Protocol):
    def compose(self, exchange: Exchange) -> ComposedMail: ...


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """What happened to one mail, for the MPL: who took it and what the server said."""

    receiver: str
    server: str  # host:port
    route: str | None  # "location plant-1 via 127.0.0.1:1080", None for internet
    sender: str
    accepted: tuple[str, ...]
    replies: Mapping[str, str]  # recipient -> reply to RCPT TO
    data_reply: str  # reply to the data, e.g. "250 2.0.0 Ok: queued as 4Y2..."
    size: int
    attempts: int
    reused_connection: bool

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "replies": dict(self.replies)}


class SmtpReceiver:
    """One ``receiver mail`` block of a deployed flow, ready to send many mails.

    ``pool`` may be shared between receivers (sessions are keyed by server, protection,
    login and route, never mixed); by default each receiver has its own, with
    ``per_target`` sessions at most. ``composer`` replaces the MailComposer (tests,
    simulation); ``tokens`` shares OAuth2 tokens between receivers.
    """

    def __init__(
        self,
        receiver: Receiver,
        resources: SmtpResources,
        *,
        pool: SmtpPool | None = None,
        per_target: int = 4,
        composer: Composer | None = None,
        tokens: OAuth2Tokens | None = None,
        ehlo_name: str | None = None,
    ) -> None:
        if receiver.connection.protection not in (
            "off",
            "starttls-mandatory",
            "starttls-optional",
            "smtps",
        ):
            raise ValueError(f"protection {receiver.connection.protection} is not for SMTP")
        self.receiver = receiver
        self.resources = resources
        self._own_pool = pool is None
        self.pool = pool or SmtpPool(per_target=per_target)
        self.composer = composer or _default_composer(receiver, resources)
        self.tokens = tokens or OAuth2Tokens()
        self._ehlo_name = ehlo_name
        connection = receiver.connection
        self._timeout = connection.timeout.total_seconds()
        self._internet = connection.proxy.type == "internet"

    # -- the public surface ----------------------------------------------------------------

    async def deliver(self, exchange: Exchange) -> DeliveryReport:
        """Compose the mail for ``exchange`` and send it; raises the chain on failure."""
        mail = self.composer.compose(exchange)
        return await self.send(mail, exchange)

    async def send(self, mail: ComposedMail, exchange: Exchange | None = None) -> DeliveryReport:
        """Send an already composed mail (``exchange`` evaluates a location expression)."""
        target = self._target(exchange)
        ledger = exchange.properties.get(LEDGER) if exchange is not None else None
        key = RecipientLedger.receiver_key(self.receiver.name, exchange.branch if exchange else "")
        try:
            if isinstance(ledger, RecipientLedger):
                return await self._send_remaining(target, mail, ledger, key)
            return await self._send(target, mail)
        except ProcessingError as exc:
            # The MPL gets the whole chain from the runner; the log says where and whether.
            log.info(
                "smtp.delivery_failed",
                **target.log_fields(),
                error=f"{type(exc).__name__}: {exc.message}",
                retryable=exc.retryable,
                library_cause=library_cause(exc),
            )
            raise

    async def _send_remaining(
        self, target: SmtpTarget, mail: ComposedMail, ledger: RecipientLedger, key: str
    ) -> DeliveryReport:
        """Send only to recipients that do not have the mail yet, and record each reply:
        accepted -> sent, 5xx -> refused (final), 4xx -> pending (a retry sends to them)."""
        remaining = [a for a in mail.recipients if not ledger.finished(key, a)]
        report: DeliveryReport | None = None
        if remaining:
            try:
                report = await self._send(target, _Envelope(mail, remaining))
            except SendFailedException as exc:
                if exc.valid_sent:  # the transaction went through for some: never again
                    ledger.record(key, [(a, SENT, "") for a in exc.valid_sent])
                replies = [(a, state_of(r), r) for a, r in exc.replies.items() if a in remaining]
                ledger.record(key, replies)
                pending = [a for a in remaining if not ledger.finished(key, a)]
                if exc.valid_sent and pending:
                    raise some_recipients_pending(exc, pending) from None
                raise
            ledger.record(key, [(a, SENT, report.replies.get(a, "")) for a in report.accepted])
        refused = ledger.refused(key)
        if refused:  # the others have it (now or from an earlier attempt); these never will
            raise some_recipients_refused(refused, ledger.sent(key))
        if report is not None:
            return report
        return DeliveryReport(
            receiver=self.receiver.name,
            server=target.address,
            route=target.route.describe() if target.route else None,
            sender=mail.sender,
            accepted=tuple(ledger.sent(key)),
            replies={},
            data_reply="not sent again: every recipient has it",
            size=len(message_of(mail)),
            attempts=0,
            reused_connection=False,
        )

    async def _send(self, target: SmtpTarget, mail: ComposedMail) -> DeliveryReport:
        login = self._login(mail.sender, target.route)
        recipients = list(mail.recipients)
        if not recipients:
            raise MessagingException(
                f"receiver {self.receiver.name}: the mail has no recipients",
                hint="to, cc and bcc evaluated to nothing; check their expressions",
                retryable=False,
            )
        key = PoolKey(
            target.host,
            target.port,
            target.protection,
            login.user if login else None,
            login.credential if login else None,
            target.route,
        )
        ehlo = self._ehlo_name or await local_hostname()

        async def opener() -> SmtpSession:
            return await open_session(target, tls=self._tls, login=login, local_hostname=ehlo)

        lost: MailConnectException | None = None
        for attempt in range(1, _ATTEMPTS + 1):
            # A retry takes a fresh connection: the idle ones may be as dead as the first.
            async with self.pool.lease(key, opener, fresh=attempt > 1) as lease:
                try:
                    result = await send_transaction(
                        lease.session,
                        mail.sender,
                        recipients,
                        message_of(mail),
                        chunking=self.receiver.chunking,
                    )
                except MailConnectException as exc:  # lost before the server took the data
                    lease.discard()
                    lost = exc
                    log.warning(
                        "smtp.connection_lost",
                        **target.log_fields(),
                        attempt=attempt,
                        reused=lease.reused,
                        error=exc.message,
                    )
                    continue
                reused = lease.reused
            return self._report(target, mail, result, attempt, reused)
        assert lost is not None
        final = MailConnectException(
            f"{lost.message}; the mail was not sent (tried {_ATTEMPTS} times, the last on a "
            "fresh connection)",
            hint=lost.hint,
            retryable=True,
        )
        raise final from lost.__cause__

    async def aclose(self) -> None:
        """Close the pooled sessions (only those of this receiver's own pool)."""
        if self._own_pool:
            await self.pool.aclose()

    async def __aenter__(self) -> SmtpReceiver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<SmtpReceiver {self.receiver.name} {self.receiver.connection.address}>"

    # -- per delivery ------------------------------------------------------------------------

    def _report(
        self,
        target: SmtpTarget,
        mail: ComposedMail,
        result: TransactionResult,
        attempts: int,
        reused: bool,
    ) -> DeliveryReport:
        log.debug(
            "smtp.sent",
            **target.log_fields(),
            recipients=len(result.accepted),
            refused=len(result.refused),
            size=len(message_of(mail)),
            reply=result.data_reply,
        )
        if result.refused:
            raise some_recipients_refused(result.refused, list(result.accepted))
        return DeliveryReport(
            receiver=self.receiver.name,
            server=target.address,
            route=target.route.describe() if target.route else None,
            sender=mail.sender,
            accepted=result.accepted,
            replies=result.replies,
            data_reply=result.data_reply,
            size=len(message_of(mail)),
            attempts=attempts,
            reused_connection=reused,
        )

    def _target(self, exchange: Exchange | None) -> SmtpTarget:
        connection = self.receiver.connection
        address = connection.address
        target = SmtpTarget(
            address.host,
            address.port,
            connection.protection,
            self._timeout,
            None,
            self.receiver.name,
        )
        if self._internet:
            return target
        return dataclasses.replace(target, route=self._route(target, exchange))

    def _route(self, target: SmtpTarget, exchange: Exchange | None) -> ProxyRoute | None:
        try:
            return resolve_route(
                self.receiver.connection.proxy,
                locations=self.resources.locations(),
                credentials=self.resources.credentials(),
                exchange=exchange,
            )
        except SocksException as exc:
            raise couldnt_connect(target, exc) from exc
        except (SecurityError, ConnectorError) as exc:
            raise self._tenant_error(exc) from exc

    def _login(self, sender: str, route: ProxyRoute | None = None) -> Login | None:
        connection = self.receiver.connection
        auth = connection.auth
        if auth.method == "none":
            return None
        name = auth.credential or ""
        credential = self._credential(name)
        if auth.method == "oauth2":
            if not isinstance(credential, OAuth2ClientCredentials | OAuth2RefreshToken):
                raise self._wrong_kind(name, credential, "oauth2-client-credentials")
            # The client-credentials grant names no mailbox: the login is the flow's `user`,
            # else the mailbox signed in for (refresh token), else the envelope sender. The
            # token request takes the mail connection's route.
            source = self.tokens.source(
                credential,
                tls=self._tls,
                timeout=self._timeout,
                route=route,
                store=self.resources if isinstance(self.resources, TenantSecurity) else None,
            )
            return Login(
                "oauth2",
                name,
                auth.user or getattr(credential, "user", None) or sender,
                token=source,
                allow_plaintext=connection.allow_plaintext_auth,
            )
        if not isinstance(credential, UserCredential):
            raise self._wrong_kind(name, credential, "user")
        return Login(
            auth.method,
            name,
            credential.user,
            password=credential.password,
            allow_plaintext=connection.allow_plaintext_auth,
        )

    def _credential(self, name: str) -> Credential:
        try:
            return self.resources.credential(name)
        except SecurityError as exc:
            raise self._tenant_error(exc) from exc

    def _tenant_error(self, exc: FlowrtError) -> MessagingException:
        """A tenant store that cannot be read, or lacks what the flow names: not retryable
        by waiting, but fixed by the operator (the hint says how)."""
        return MessagingException(
            f"receiver {self.receiver.name}: {exc.message}", hint=exc.hint, retryable=False
        )

    def _wrong_kind(self, name: str, credential: Credential, wanted: str) -> MessagingException:
        fix = f"`flowrt credentials add {name} --replace ...`"
        if wanted == "oauth2-client-credentials":
            # a delegated sign-in (oauth2-refresh-token) serves as well
            fix += f", or sign in as the mailbox: `flowrt credentials oauth2-login {name} ...`"
        return MessagingException(
            f"receiver {self.receiver.name}: auth {self.receiver.connection.auth.method} needs "
            f"a credential of kind {wanted}, but '{name}' is of kind {credential.kind}",
            hint=f"replace it with one of kind {wanted}: {fix}",
            retryable=False,
        )

    def _tls(self) -> ssl.SSLContext:
        """A verifying context from the current keystore (cached there per content)."""
        try:
            return client_context(self.resources.keystore())
        except SecurityError as exc:
            raise self._tenant_error(exc) from exc


class _Envelope:
    """A composed mail sent to some of its recipients only (a retry)."""

    def __init__(self, mail: ComposedMail, recipients: list[str]) -> None:
        self.sender = mail.sender
        self.recipients = recipients
        self.message = message_of(mail)

    @property
    def data(self) -> bytes:
        return message_bytes(self.message)


def _default_composer(receiver: Receiver, resources: SmtpResources) -> Composer:
    keystore: object | None = None
    if receiver.sign is not None or receiver.encrypt is not None:
        # A TenantSecurity is handed over as it is, so that S/MIME reads the current keystore.
        keystore = resources if isinstance(resources, TenantSecurity) else resources.keystore()
    composer: Composer = MailComposer(receiver, keystore=keystore)
    return composer
