"""What the receiver takes from the tenant: credentials, their kinds, the report it gives."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import MessagingException, find_hint, is_retryable
from tests.servers.scripted_smtp import ScriptedSMTPServer
from tests.smtp.conftest import TestTenant, make_receiver

Start = Callable[..., ScriptedSMTPServer]


def mail() -> Exchange:
    return Exchange(body=b"hi\n", headers=Headers([("Subject", "config")]))


async def test_missing_credential_names_it_and_how_to_add_one(tenant: TestTenant) -> None:
    receiver = make_receiver(address='"127.0.0.1:1"', auth='plain credential "nope"')
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert info.value.message == (
        "receiver out: no credential named 'nope' in the credential store"
    )
    assert "flowrt credentials add" in (find_hint(info.value) or "")
    assert not is_retryable(info.value)


async def test_wrong_credential_kind(tenant: TestTenant) -> None:
    receiver = make_receiver(address='"127.0.0.1:1"', auth='oauth2 credential "smtp-out"')
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert info.value.message == (
        "receiver out: auth oauth2 needs a credential of kind oauth2-client-credentials, but "
        "'smtp-out' is of kind user"
    )


async def test_credential_changes_apply_to_new_sessions_without_a_redeploy(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(credentials={"plant@example.com": "new-secret"}, auth_require_tls=False)
    receiver = make_receiver(
        address=f'"127.0.0.1:{server.port}"',
        protection="off",
        allow_plaintext_auth="",
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(MessagingException):
            await smtp.deliver(mail())
        tenant.add_user("smtp-out", "plant@example.com", "new-secret")  # `credentials add`
        report = await smtp.deliver(mail())
    assert report.accepted == ("accounting@example.com",)


async def test_report_is_plain_data_for_the_mpl(tenant: TestTenant, scripted: Start) -> None:
    server = scripted()
    receiver = make_receiver(address=f'"127.0.0.1:{server.port}"', protection="off", auth="none")
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        report = await smtp.deliver(mail())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["receiver"] == "out"
    assert data["server"] == f"127.0.0.1:{server.port}"
    assert data["accepted"] == ["accounting@example.com"]
    assert data["replies"] == {"accounting@example.com": "250 2.1.5 OK"}
    assert data["data_reply"] == "250 2.0.0 OK queued"
    assert data["attempts"] == 1 and data["route"] is None


def test_imap_protection_is_refused(tenant: TestTenant) -> None:
    receiver = make_receiver(address='"127.0.0.1:1"')
    imaps = dataclasses.replace(
        receiver, connection=dataclasses.replace(receiver.connection, protection="imaps")
    )
    with pytest.raises(ValueError, match="protection imaps is not for SMTP"):
        SmtpReceiver(imaps, tenant.security)
