"""The sender wired from a real tenant: credential store, keystore-only trust, on-premise
location (through Dante); and the Message-ID fallback across a UIDVALIDITY change."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from flowrt.adapters.mail.model import PostProcess, Proxy
from flowrt.adapters.mail.sender.endpoint import endpoint_from_tenant
from flowrt.dsl.model import Template
from flowrt.errors import MessagingException, render_chain
from flowrt.runtime.state import StateDB
from flowrt.security import TenantSecurity, edit_credentials, edit_keystore, edit_locations
from flowrt.security.credentials import UserCredential
from flowrt.security.locations import Location
from flowrt.security.secret import Secret
from flowrt.security.setup import init_tenant
from flowrt.tenant import Tenant
from tests.sender.conftest import (
    Recorder,
    endpoint_for,
    fill,
    flags_by_subject,
    make_mail,
    make_sender,
    poller,
)
from tests.servers import DanteServer, DovecotServer, MailboxUser, TestCA


@pytest.fixture
def tenant(tmp_path: Path, mailbox_user: MailboxUser) -> Tenant:
    tenant = init_tenant(tmp_path / "tenant", environ={}).tenant
    with edit_credentials(tenant) as store:
        store.put(UserCredential("mailbox", mailbox_user.address, Secret(mailbox_user.password)))
    return tenant


async def test_endpoint_from_tenant_trusts_only_the_keystore(
    dovecot: DovecotServer, mailbox_user: MailboxUser, tenant: Tenant, test_ca: TestCA
) -> None:
    sender = make_sender(port=dovecot.imaps_port, protection="imaps")
    security = TenantSecurity.open(tenant)
    handle = Recorder()
    fill(dovecot, mailbox_user, [make_mail("trusted")])
    with StateDB.open(tenant) as state:
        # an empty keystore trusts nothing, whatever the system trusts
        untrusted = poller(sender, endpoint_from_tenant(sender, security), handle, state)
        with pytest.raises(MessagingException) as info:
            await untrusted.poll_once()
        assert "PKIX path building failed" in render_chain(info.value)
        assert "--import" in (untrusted.health.last_error + (info.value.__cause__.hint or ""))
        with edit_keystore(tenant) as keystore:
            keystore.add_certificates("test-root", [test_ca.certificate])
        endpoint = endpoint_from_tenant(sender, security)
        assert endpoint.login.user == mailbox_user.address
        assert (await poller(sender, endpoint, handle, state).poll_once()).handled == 1
    assert handle.subjects == ["trusted"]


async def test_on_premise_location_goes_through_the_socks_proxy(
    dante: DanteServer,
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    tenant: Tenant,
    test_ca: TestCA,
) -> None:
    with edit_locations(tenant) as locations:
        locations.add(Location("plant-1", dante.host, dante.port))
    with edit_keystore(tenant) as keystore:
        keystore.add_certificates("test-root", [test_ca.certificate])
    base = make_sender(port=dovecot.imap_port, protection="starttls-mandatory")
    location = Template(("plant-1",), "plant-1", base.pos)
    connection = dataclasses.replace(base.connection, proxy=Proxy("on-premise", location))
    sender = dataclasses.replace(base, connection=connection)
    endpoint = endpoint_from_tenant(sender, TenantSecurity.open(tenant))
    assert endpoint.route is not None and endpoint.route.port == dante.port
    fill(dovecot, mailbox_user, [make_mail("on-premise")])
    handle = Recorder()
    with StateDB.open(tenant) as state:
        await poller(sender, endpoint, handle, state).poll_once()
    assert handle.subjects == ["on-premise"]


async def test_message_id_fallback_after_a_uidvalidity_change(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    """A mailbox rebuilt under a new UIDVALIDITY: its UIDs mean nothing any more, but the
    Message-IDs of mails done before still stop them from being handed over again."""
    fill(dovecot, mailbox_user, [make_mail("old"), make_mail("older")])
    sender = make_sender(port=dovecot.imap_port, post_process=PostProcess("keep"))
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user), handle, state)
    await p.poll_once()
    # what a rebuild looks like to us: the records are of another generation
    conn = sqlite3.connect(state.path)
    conn.execute("UPDATE mail_records SET key = 'uid:1:' || key, generation = '1'")
    conn.commit()
    conn.close()
    fill(dovecot, mailbox_user, [make_mail("new")])
    result = await p.poll_once()
    assert (result.handled, result.recovered) == (1, 2)
    assert handle.subjects == ["old", "older", "new"]
    assert flags_by_subject(dovecot, mailbox_user) == {"old": (), "older": (), "new": ()}
    assert (await p.poll_once()).skipped == 3  # now recorded under the new generation too
