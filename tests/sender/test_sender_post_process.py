"""IMAP polls against the real Dovecot: every post-process mode checked in the mailbox,
selection, max-messages, failed or broken mails left alone, exchange properties."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from flowrt.adapters.mail.imap.mailbox import ImapMailbox
from flowrt.adapters.mail.model import PostProcess
from flowrt.adapters.mail.sender.mailbox import Mailbox
from flowrt.engine.exchange import Exchange
from flowrt.errors import FolderNotFoundException, StepException
from flowrt.runtime.state import StateDB
from tests.sender.conftest import (
    Recorder,
    endpoint_for,
    fill,
    flags_by_subject,
    make_mail,
    make_sender,
    poller,
)
from tests.servers import DovecotServer, MailboxUser

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def imaps(dovecot: DovecotServer, **settings: Any) -> Any:
    return make_sender(port=dovecot.imaps_port, protection="imaps", **settings)


async def test_mark_read(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "b", "c")])
    sender = imaps(dovecot, post_process=PostProcess("mark-read"))
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state)
    result = await p.poll_once()
    assert (result.handled, result.post_processed) == (3, 3)
    assert flags_by_subject(dovecot, mailbox_user) == {s: ("\\Seen",) for s in "abc"}
    assert (await p.poll_once()).handled == 0
    assert p.health.handled == 3 and p.health.consecutive_failures == 0


async def test_delete_expunges_only_the_finished_mails(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "bad", "c")])
    sender = imaps(dovecot, post_process=PostProcess("delete"))
    handle = Recorder(lambda e: e.headers.get("Subject") != "bad")
    await poller(
        sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state
    ).poll_once()
    assert flags_by_subject(dovecot, mailbox_user) == {"bad": ()}


@pytest.mark.parametrize("mark_read", [False, True])
async def test_archive_moves(
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    client_tls: ssl.SSLContext,
    state: StateDB,
    mark_read: bool,
) -> None:
    dovecot.create_folder(mailbox_user.address, "Processed")
    fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "b")])
    sender = imaps(dovecot, post_process=PostProcess("archive", "Processed", mark_read))
    await poller(
        sender, endpoint_for(sender, mailbox_user, tls=client_tls), Recorder(), state
    ).poll_once()
    assert flags_by_subject(dovecot, mailbox_user) == {}
    flags = ("\\Seen",) if mark_read else ()
    assert flags_by_subject(dovecot, mailbox_user, "Processed") == {"a": flags, "b": flags}


async def test_archive_without_move_falls_back_to_copy_store_expunge(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    dovecot.create_folder(mailbox_user.address, "Done")
    fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "b")])
    sender = imaps(dovecot, post_process=PostProcess("archive", "Done"))
    endpoint = endpoint_for(sender, mailbox_user, tls=client_tls)

    async def without_move() -> Mailbox:
        mailbox = await ImapMailbox.open(
            endpoint, folder="INBOX", selection="unread", post_process=sender.post_process
        )
        mailbox.client.capabilities.discard("MOVE")
        return mailbox

    await poller(sender, endpoint, Recorder(), state, opener=without_move).poll_once()
    assert flags_by_subject(dovecot, mailbox_user) == {}
    assert sorted(flags_by_subject(dovecot, mailbox_user, "Done")) == ["a", "b"]


async def test_archive_to_a_missing_folder_fails_before_any_mail_is_handled(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail("a")])
    sender = imaps(dovecot, post_process=PostProcess("archive", "Nowhere"))
    handle = Recorder()
    with pytest.raises(FolderNotFoundException, match="archive folder 'Nowhere'") as info:
        await poller(
            sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state
        ).poll_once()
    assert "create the folder 'Nowhere'" in (info.value.hint or "")
    assert handle.seen == []
    assert flags_by_subject(dovecot, mailbox_user) == {"a": ()}


async def test_keep_leaves_the_mailbox_and_never_hands_over_twice(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "b")])
    sender = imaps(dovecot, post_process=PostProcess("keep"), max_messages=2)
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state)
    await p.poll_once()
    fill(dovecot, mailbox_user, [make_mail("c")])
    second = await p.poll_once()
    # kept mails do not use up max-messages: the new one is handled
    assert (second.handled, second.skipped) == (1, 2)
    assert handle.subjects == ["a", "b", "c"]
    assert flags_by_subject(dovecot, mailbox_user) == {s: () for s in "abc"}


@pytest.mark.parametrize(
    ("selection", "post", "handled", "left"),
    [
        ("unread", "keep", ["unread"], {"read": ("\\Seen",), "unread": ()}),
        ("all", "delete", ["read", "unread"], {}),
    ],
)
async def test_selection_unread_and_all(
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    client_tls: ssl.SSLContext,
    state: StateDB,
    selection: str,
    post: str,
    handled: list[str],
    left: dict[str, tuple[str, ...]],
) -> None:
    dovecot.append(mailbox_user.address, "INBOX", make_mail("read"), flags=["\\Seen"])
    fill(dovecot, mailbox_user, [make_mail("unread")])
    sender = imaps(dovecot, selection=selection, post_process=PostProcess(post))  # type: ignore[arg-type]
    handle = Recorder()
    await poller(
        sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state
    ).poll_once()
    assert handle.subjects == handled
    assert flags_by_subject(dovecot, mailbox_user) == left


async def test_max_messages_limits_each_poll(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail(f"m{i}") for i in range(5)])
    sender = imaps(dovecot, max_messages=2)
    handle = Recorder()
    p = poller(sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state)
    results = [await p.poll_once() for _ in range(3)]
    assert [(r.handled, r.more) for r in results] == [(2, True), (2, True), (1, False)]
    assert handle.subjects == [f"m{i}" for i in range(5)]  # oldest first


async def test_failed_mail_stays_untouched_and_is_retried_counted(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail(s) for s in ("ok", "flaky", "boom")])
    outcomes: dict[str, list[Any]] = {"flaky": [False, True], "boom": [StepException("x"), True]}

    def verdict(exchange: Exchange) -> Any:
        subject = exchange.headers.get("Subject") or ""
        return outcomes[subject].pop(0) if subject in outcomes else True

    sender = imaps(dovecot)
    handle = Recorder(verdict)
    p = poller(sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state)
    first = await p.poll_once()
    assert (first.handled, first.failed) == (1, 2)
    assert flags_by_subject(dovecot, mailbox_user) == {"ok": ("\\Seen",), "flaky": (), "boom": ()}
    failed = [
        r
        for r in state.records(p_scope(mailbox_user), _all_keys(state, mailbox_user)).values()
        if not r.done
    ]
    assert sorted(r.last_error for r in failed) == ["StepException: x", "the flow did not complete"]
    second = await p.poll_once()
    assert (second.handled, second.failed) == (2, 0)
    retried = handle.seen[-2:]
    assert [e.properties["mail.attempt"] for e in retried] == [2, 2]
    assert flags_by_subject(dovecot, mailbox_user) == {
        s: ("\\Seen",) for s in ("ok", "flaky", "boom")
    }
    assert p.health.failed == 2


def p_scope(user: MailboxUser) -> str:
    return f"imap:{user.address}@127.0.0.1/INBOX"


def _all_keys(state: StateDB, user: MailboxUser) -> list[str]:
    return state.keys(p_scope(user))


async def test_a_broken_mail_does_not_block_the_others(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail("before"), PNG, make_mail("after")])
    sender = imaps(dovecot)
    handle = Recorder()
    result = await poller(
        sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state
    ).poll_once()
    assert (result.handled, result.failed) == (2, 1)
    assert handle.subjects == ["before", "after"]
    remaining = [raw for _uid, flags, raw in dovecot.messages(mailbox_user.address) if not flags]
    assert len(remaining) == 1 and remaining[0].startswith(b"\x89PNG")  # Dovecot fixes EOLs
    record = next(
        r
        for r in state.records(p_scope(mailbox_user), _all_keys(state, mailbox_user)).values()
        if not r.done
    )
    assert record.last_error.startswith("MessageFormatException: not a mail")


async def test_exchange_properties_headers_attachments_original(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    raw = (
        b"From: a@example.com\r\nSubject: with file\r\nX-Extra: 1\r\n"
        b"Message-ID: <props@flowrt.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nbody text\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="x.pdf"\r\n\r\n%PDF-1.4\r\n--b--\r\n'
    )
    (uid,) = fill(dovecot, mailbox_user, [raw])
    sender = imaps(dovecot, headers=("Subject",), attachments="drop", keep_original=True)
    handle = Recorder()
    await poller(
        sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state
    ).poll_once()
    (exchange,) = handle.seen
    props = exchange.properties
    assert props["mail.uid"] == uid and props["mail.folder"] == "INBOX"
    assert props["mail.protocol"] == "imap" and props["mail.uidvalidity"] > 0
    assert props["mail.original"] == raw
    assert exchange.headers.names() == ["Subject"]
    assert exchange.attachments == [] and exchange.text.strip() == "body text"
    record = state.records(p_scope(mailbox_user), [f"uid:{props['mail.uidvalidity']}:{uid}"])
    assert next(iter(record.values())).message_id == "props@flowrt.test"


async def test_a_large_mail_comes_through_intact(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    raw = make_mail("big", body="line of text\r\n" * 400_000)  # about 5.6 MB
    fill(dovecot, mailbox_user, [make_mail("small"), raw])
    sender = imaps(dovecot, keep_original=True)
    handle = Recorder()
    await poller(
        sender, endpoint_for(sender, mailbox_user, tls=client_tls), handle, state
    ).poll_once()
    assert handle.subjects == ["small", "big"]
    assert handle.seen[1].properties["mail.original"] == raw
