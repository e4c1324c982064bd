"""IMAP against the real Dovecot: protections, auth methods, and failures as chains."""

from __future__ import annotations

import ssl

import pytest

from flowrt.adapters.mail.imap.session import open_imap
from flowrt.errors import (
    AuthenticationFailedException,
    FolderNotFoundException,
    MessagingException,
    find_hint,
    is_retryable,
    render_chain,
)
from flowrt.runtime.state import StateDB
from tests.sender.conftest import (
    Recorder,
    endpoint_for,
    fill,
    flags_by_subject,
    make_mail,
    make_sender,
    poller,
    protection_cases,
)
from tests.servers import DovecotServer, MailboxUser, TestCA


@pytest.mark.parametrize(("protection", "port", "auth", "tls"), protection_cases("imap"))
async def test_poll_with_each_protection_and_auth(
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    client_tls: ssl.SSLContext,
    state: StateDB,
    protection: str,
    port: str,
    auth: str,
    tls: bool,
) -> None:
    sender = make_sender(port=dovecot.ports()[port], protection=protection, auth=auth)
    endpoint = endpoint_for(sender, mailbox_user, tls=client_tls)
    client = await open_imap(endpoint)
    try:
        assert client.tls_active is tls
        assert client.state == "AUTH"
    finally:
        await client.logout()
    fill(dovecot, mailbox_user, [make_mail("one")])
    handle = Recorder()
    result = await poller(sender, endpoint, handle, state).poll_once()
    assert result.handled == 1 and handle.subjects == ["one"]
    assert flags_by_subject(dovecot, mailbox_user) == {"one": ("\\Seen",)}


async def test_non_ascii_password_uses_authenticate_plain(
    dovecot: DovecotServer, client_tls: ssl.SSLContext
) -> None:
    dovecot.add_user("umlaut@example.com", "pässwörd-ß")
    user = MailboxUser("umlaut@example.com", "pässwörd-ß")
    endpoint = endpoint_for(
        make_sender(port=dovecot.imaps_port, protection="imaps"), user, tls=client_tls
    )
    client = await open_imap(endpoint)
    assert client.state == "AUTH"
    await client.logout()


async def test_wrong_password_is_an_authentication_failure_with_the_servers_reply(
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    client_tls: ssl.SSLContext,
    state: StateDB,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sender = make_sender(port=dovecot.imap_port, protection="starttls-mandatory")
    endpoint = endpoint_for(sender, mailbox_user, tls=client_tls, password="not-it")
    with pytest.raises(AuthenticationFailedException) as info:
        await open_imap(endpoint)
    chain = render_chain(info.value)
    assert chain.startswith("AuthenticationFailedException: [AUTHENTICATIONFAILED]")
    assert "credential 'mailbox'" in (find_hint(info.value) or "")
    assert "not-it" not in chain + (find_hint(info.value) or "") + repr(info.value)
    assert not is_retryable(info.value)
    # the poller reports it in its health, and raises the same chain
    p = poller(sender, endpoint, Recorder(), state)
    with pytest.raises(AuthenticationFailedException):
        await p.poll_once()
    assert p.health.consecutive_failures == 1
    assert p.health.last_error.startswith("AuthenticationFailedException: ")
    assert state.health(p.name)[0].last_error == p.health.last_error
    logged = capsys.readouterr()
    assert "poll failed" in logged.out  # the chain and hint were logged ...
    assert "not-it" not in logged.out + logged.err  # ... and the password nowhere


async def test_plain_auth_over_clear_text_is_refused(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    sender = make_sender(port=dovecot.imap_port, protection="off", allow_plaintext_auth=False)
    with pytest.raises(MessagingException, match="refusing to send the password") as info:
        await open_imap(endpoint_for(sender, mailbox_user))
    assert "allow-plaintext-auth" in (info.value.hint or "")
    assert mailbox_user.password not in render_chain(info.value)


async def test_starttls_mandatory_fails_when_not_offered(
    dovecot_no_tls: DovecotServer, client_tls: ssl.SSLContext
) -> None:
    user = dovecot_no_tls.new_user()
    sender = make_sender(port=dovecot_no_tls.imap_port, protection="starttls-mandatory")
    with pytest.raises(MessagingException, match="does not offer STARTTLS;") as info:
        await open_imap(endpoint_for(sender, user, tls=client_tls))
    assert "someone on the path removing it" in (info.value.hint or "")
    assert not info.value.retryable


async def test_starttls_optional_goes_on_without_tls(
    dovecot_no_tls: DovecotServer, client_tls: ssl.SSLContext
) -> None:
    user = dovecot_no_tls.new_user()
    sender = make_sender(
        port=dovecot_no_tls.imap_port,
        protection="starttls-optional",
        auth="encrypted",
        allow_plaintext_auth=False,
    )
    client = await open_imap(endpoint_for(sender, user, tls=client_tls))
    assert not client.tls_active and client.state == "AUTH"
    await client.logout()


@pytest.mark.parametrize(
    ("protection", "port"), [("imaps", "imaps"), ("starttls-mandatory", "imap")]
)
async def test_untrusted_server_certificate_names_the_issuer_and_the_fix(
    dovecot: DovecotServer, mailbox_user: MailboxUser, protection: str, port: str
) -> None:
    stranger = TestCA("Some Other Root").client_context()
    sender = make_sender(port=dovecot.ports()[port], protection=protection)
    with pytest.raises(MessagingException) as info:
        await open_imap(endpoint_for(sender, mailbox_user, tls=stranger))
    chain = render_chain(info.value)
    number = dovecot.ports()[port]
    assert chain.startswith(
        f"MessagingException: Could not connect to IMAP host: 127.0.0.1, port: {number};"
    )
    assert "SSLHandshakeException: PKIX path building failed" in chain
    assert "CN=flowrt Test Intermediate CA" in chain
    hint = find_hint(info.value) or ""
    assert f"flowrt test imap 127.0.0.1:{number} --protection {protection} --import" in hint


async def test_refused_port_is_a_retryable_connect_failure(state: StateDB) -> None:
    from tests.servers import free_port

    sender = make_sender(port=free_port())
    with pytest.raises(MessagingException) as info:
        await open_imap(endpoint_for(sender, MailboxUser("x@example.com", "y")))
    assert render_chain(info.value).startswith("MessagingException: Could not connect to IMAP host")
    assert "ConnectException: Connection refused" in render_chain(info.value)
    assert is_retryable(info.value)


async def test_missing_folder(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    sender = make_sender(port=dovecot.imaps_port, protection="imaps", folder="No/Such")
    handle = Recorder()
    with pytest.raises(FolderNotFoundException) as info:
        await poller(
            sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state
        ).poll_once()
    assert "'No/Such' not found" in info.value.message
    assert "--list-folders" in (info.value.hint or "")
    assert handle.seen == []


async def test_list_folders_and_a_non_ascii_folder(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    sender = make_sender(port=dovecot.imaps_port, protection="imaps", folder="Entwürfe")
    endpoint = endpoint_for(sender, mailbox_user, tls=client_tls)
    client = await open_imap(endpoint)
    from aioimaplib.aioimaplib import Command

    from flowrt.adapters.mail.imap.parse import encode_folder

    response = await client.execute(
        Command("CREATE", client._tag(), f'"{encode_folder("Entwürfe")}"', loop=client._loop)
    )
    assert response.result == "OK"
    names = [name for name, _ in await client.list_folders()]
    assert "Entwürfe" in names and "INBOX" in names
    await client.logout()
    dovecot.append(mailbox_user.address, "Entw&APw-rfe", make_mail("draft"), create=False)
    handle = Recorder()
    assert (await poller(sender, endpoint, handle, state).poll_once()).handled == 1
    assert handle.seen[0].properties["mail.folder"] == "Entwürfe"
