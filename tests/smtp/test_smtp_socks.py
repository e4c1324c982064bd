"""``proxy on-premise location "ID"``: through Dante (a standard SOCKS5 server) to Postfix."""

from __future__ import annotations

import pytest

from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import MailConnectException, SocksException, find_hint, render_chain
from tests.servers import DanteServer, DovecotServer, MailboxUser, PostfixServer
from tests.smtp.conftest import TestTenant, make_receiver

pytestmark = pytest.mark.servers


def mail(subject: str) -> Exchange:
    return Exchange(body=b"via the connector\n", headers=Headers([("Subject", subject)]))


async def test_allowed_destination_goes_through_dante(
    postfix: PostfixServer,
    dovecot: DovecotServer,
    dante: DanteServer,
    tenant: TestTenant,
    mailbox_user: MailboxUser,
) -> None:
    tenant.add_location("plant-1", "127.0.0.1", dante.port)
    receiver = make_receiver(
        address=f'"127.0.0.1:{postfix.submission_port}"',
        proxy='on-premise location "plant-1"',
        to=f'"{mailbox_user}"',
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        report = await smtp.deliver(mail("socks allowed"))
    assert report.route == f"location plant-1 via 127.0.0.1:{dante.port}"
    dovecot.wait_for_message(mailbox_user.address)
    assert f"127.0.0.1.{postfix.submission_port}" in dante.log()


async def test_denied_destination_is_not_allowed_by_ruleset(
    dovecot: DovecotServer, dante: DanteServer, tenant: TestTenant
) -> None:
    tenant.add_location("plant-1", "127.0.0.1", dante.port)
    denied = dovecot.lmtp_port  # Dante passes the mail ports only
    receiver = make_receiver(
        address=f'"127.0.0.1:{denied}"',
        protection="smtps",
        proxy='on-premise location "plant-1"',
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail("socks denied"))
    assert render_chain(info.value).startswith(
        f"MailConnectException: Couldn't connect to host, port: 127.0.0.1, {denied}; "
        "timeout 10000\n"
        "  nested exception is:\n"
        "\tSocksException: Connection not allowed by ruleset"
    )
    assert isinstance(info.value.__cause__, SocksException)
    assert find_hint(info.value) == (f"add a mapping for 127.0.0.1:{denied} in location plant-1")
    assert not info.value.retryable  # a missing mapping does not heal by retrying


async def test_unknown_location_says_how_to_register_it(tenant: TestTenant) -> None:
    receiver = make_receiver(
        address='"mail.plant.example:587"', proxy='on-premise location "plant-9"'
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(MailConnectException) as info:
            await smtp.deliver(mail("nowhere"))
    assert "unknown location ID 'plant-9'" in render_chain(info.value)
    assert "flowrt locations add plant-9" in (find_hint(info.value) or "")
    assert not info.value.retryable
