"""The mail adapter at work in one process: IMAP/POP3 pollers as sources, SMTP receivers as
deliveries, sharing one SMTP connection pool and one OAuth2 token cache.

Protocol modules are imported when first needed, so that ``flowrt simulate`` without
``--live`` composes mails without loading an SMTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowrt.adapters.mail.model import Receiver, Sender
from flowrt.engine.exchange import Exchange
from flowrt.errors import FlowError

if TYPE_CHECKING:
    from flowrt.adapters.mail.oauth2 import OAuth2Tokens
    from flowrt.adapters.mail.smtp.pool import SmtpPool
    from flowrt.adapters.registry import Composer, Delivery, Handler, Source
    from flowrt.dsl.model import ReceiverBlock, SenderBlock
    from flowrt.security import TenantSecurity
    from flowrt.source_state import Partition


def _sender(block: SenderBlock) -> Sender:
    if not isinstance(block, Sender):
        raise FlowError(f"the mail adapter cannot run {block.describe()}")
    return block


def _receiver(block: ReceiverBlock) -> Receiver:
    if not isinstance(block, Receiver):
        raise FlowError(f"the mail adapter cannot run {block.describe()}")
    return block


class MailRuntime:
    def __init__(self) -> None:
        self._pool: SmtpPool | None = None
        self._tokens: OAuth2Tokens | None = None

    @property
    def tokens(self) -> OAuth2Tokens:
        if self._tokens is None:
            from flowrt.adapters.mail.oauth2 import OAuth2Tokens

            self._tokens = OAuth2Tokens()
        return self._tokens

    @property
    def pool(self) -> SmtpPool:
        if self._pool is None:
            from flowrt.adapters.mail.smtp.pool import SmtpPool

            self._pool = SmtpPool()
        return self._pool

    def source(
        self,
        block: SenderBlock,
        security: TenantSecurity,
        handler: Handler,
        state: Any,
        *,
        name: str,
        partition: Partition | None = None,
    ) -> Source:
        from flowrt.adapters.mail.sender.endpoint import endpoint_from_tenant
        from flowrt.adapters.mail.sender.poller import MailPoller

        sender = _sender(block)
        endpoint = endpoint_from_tenant(
            sender, security, tokens=self.tokens, oauth2_user=sender.connection.auth.user
        )
        return MailPoller(
            sender,
            endpoint,
            handler,
            state,
            name=f"{name}:{sender.protocol}",
            flow=name,
            partition=partition,
        )

    def workers(self, block: SenderBlock) -> int:
        return _sender(block).workers

    def delivery(self, block: ReceiverBlock, security: TenantSecurity) -> Delivery:
        from flowrt.adapters.mail.smtp.receiver import SmtpReceiver

        return SmtpReceiver(_receiver(block), security, pool=self.pool, tokens=self.tokens)

    def composer(self, block: ReceiverBlock, keystore: object | None) -> Composer:
        from flowrt.adapters.mail.mime.compose import MailComposer

        return MailComposer(_receiver(block), keystore=keystore)

    def needs_keys(self, block: ReceiverBlock) -> bool:
        receiver = _receiver(block)
        return receiver.sign is not None or receiver.encrypt is not None

    async def send(self, delivery: Delivery, composed: Any, exchange: Exchange) -> str:
        from flowrt.adapters.mail.smtp.receiver import SmtpReceiver

        assert isinstance(delivery, SmtpReceiver)
        report = await delivery.send(composed, exchange=exchange)
        return f"sent to {report.server}: {report.data_reply}"

    def sample(self, block: SenderBlock, data: bytes) -> Exchange:
        from flowrt.adapters.mail.mime.read import mail_to_exchange

        sender = _sender(block)
        return mail_to_exchange(
            data,
            headers=sender.headers,
            attachments=sender.attachments,
            keep_original=sender.keep_original,
        )

    def timeout_seconds(self, block: SenderBlock | ReceiverBlock) -> float:
        model = block if isinstance(block, Receiver) else _sender(block)
        return model.connection.timeout.total_seconds()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
