"""Claims against runtimes of other tenants, on real Dovecot: of two claims on one mail
exactly one runtime keeps it, also when the MODSEQ a runtime read let its conditional
STORE through after the other's (the second finds the first's keyword in its own STORE's
reply and steps back), and after a crash left both keywords on a mail."""

from __future__ import annotations

from typing import Any

from flowrt.adapters.mail.imap.mailbox import CLAIM_PREFIX, ImapMailbox
from flowrt.adapters.mail.model import PostProcess
from flowrt.source_state import Partition
from tests.sender.conftest import endpoint_for, fill, flags_by_subject, make_mail, make_sender
from tests.servers import DovecotServer, MailboxUser

MINE = f"{CLAIM_PREFIX}aaaa"
OTHER = f"{CLAIM_PREFIX}bbbb"


async def open_mailbox(
    dovecot: DovecotServer, user: MailboxUser, partition: Partition | None = None
) -> ImapMailbox:
    sender = make_sender(port=dovecot.imap_port, post_process=PostProcess("mark-read"))
    mailbox = await ImapMailbox.open(
        endpoint_for(sender, user),
        folder="INBOX",
        selection="unread",
        post_process=sender.post_process,
        claim_owner="aaaa",
        partition=partition,
    )
    assert mailbox.can_claim  # Dovecot offers CONDSTORE
    return mailbox


def keyword(dovecot: DovecotServer, user: MailboxUser, uid: int, flag: str) -> None:
    with dovecot.imap(user.address, password=user.password) as client:
        client.select("INBOX")
        client.uid("STORE", str(uid), "+FLAGS", f"({flag})")


async def test_a_claim_that_came_second_steps_back(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    uids = fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "b", "c")])
    mailbox = await open_mailbox(dovecot, mailbox_user)
    try:
        todo = await mailbox.candidates()
        real_fetch = mailbox.client.uid_fetch

        async def seen_too_late(wanted: Any, items: str) -> list[dict[str, Any]]:
            # what this runtime read: "b" free, and a MODSEQ no older than the other
            # runtime's claim of it, which lands right after the read
            got = await real_fetch(wanted, items)
            keyword(dovecot, mailbox_user, uids[1], OTHER)
            return [{**item, "modseq": 10**12} for item in got]

        mailbox.client.uid_fetch = seen_too_late  # type: ignore[method-assign]
        claimed = await mailbox.claim(todo)
        mailbox.client.uid_fetch = real_fetch  # type: ignore[method-assign]
    finally:
        await mailbox.close()
    assert sorted(c.ref for c in claimed) == [uids[0], uids[2]]
    flags = flags_by_subject(dovecot, mailbox_user)
    assert flags["b"] == (OTHER,)  # left to the other runtime, without our keyword
    assert flags["a"] == flags["c"] == (MINE,)


async def test_a_mail_a_crash_left_with_both_claims_is_stepped_back_from(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    uids = fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "b")])
    keyword(dovecot, mailbox_user, uids[0], f"{MINE} {OTHER}")
    keyword(dovecot, mailbox_user, uids[1], MINE)  # ours alone: still ours after a restart
    mailbox = await open_mailbox(dovecot, mailbox_user)
    try:
        claimed = await mailbox.claim(await mailbox.candidates())
    finally:
        await mailbox.close()
    assert [c.ref for c in claimed] == [uids[1]]
    assert flags_by_subject(dovecot, mailbox_user)["a"] == (OTHER,)


async def test_a_worker_lists_claims_and_releases_only_the_mails_of_its_partition(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    """The workers of a mailbox (``workers N``) share the runtime's claim keyword: a worker
    that ends its poll must not take the claims off another worker's mails in flight."""
    uids = fill(dovecot, mailbox_user, [make_mail(s) for s in ("a", "b", "c", "d")])
    mailbox = await open_mailbox(dovecot, mailbox_user, Partition(0, 2))
    try:
        todo = await mailbox.candidates()
        assert [c.ref for c in todo] == [u for u in uids if u % 2 == 0]
        for uid in uids:  # every mail claimed: its own by this worker, the others by the other
            keyword(dovecot, mailbox_user, uid, MINE)
        await mailbox.claim(todo)
        await mailbox.release_claims()
    finally:
        await mailbox.close()
    flags = flags_by_subject(dovecot, mailbox_user)
    for subject, uid in zip("abcd", uids, strict=True):
        assert flags[subject] == (() if uid % 2 == 0 else (MINE,)), (subject, uid, flags)
