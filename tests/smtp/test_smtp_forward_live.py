"""Forwarding real-world shapes through real servers (issue 12): the mail is stored in
Dovecot and read back over IMAP, forwarded by the receiver through Postfix, and what Dovecot
delivers to the recipient keeps every part, Content-ID and signature structure."""

from __future__ import annotations

import email.header
from collections.abc import Callable

import pytest

from flowrt.adapters.mail.mime.compose import MailComposer
from flowrt.adapters.mail.mime.read import mail_to_exchange
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from tests.mime.test_forward_corpus import CORPUS, _parse, _same, leaves
from tests.servers import DovecotServer, MailboxUser, PostfixServer
from tests.smtp.conftest import TestTenant, make_receiver

NewUser = Callable[..., MailboxUser]

pytestmark = pytest.mark.servers

SAMPLES = (
    "outlook-related-alternative.eml",
    "gmail-mixed-related-attachment.eml",
    "thunderbird-charsets-names.eml",
    "dsn-postfix.eml",
)


async def test_forward_round_trip_through_dovecot_and_postfix(
    postfix: PostfixServer, dovecot: DovecotServer, tenant: TestTenant, new_mailbox_user: NewUser
) -> None:
    source, target = new_mailbox_user("inbox"), new_mailbox_user("archive")
    for name in SAMPLES:
        dovecot.append(source.address, "INBOX", (CORPUS / name).read_bytes())
    stored = [raw for _, _, raw in dovecot.messages(source.address)]
    assert len(stored) == len(SAMPLES)
    receiver = make_receiver(
        address=f'"127.0.0.1:{postfix.submission_port}"',
        to=f'"{target}"',
        subject='"Fwd: ${header.Subject}"',
        attachments="from-message",
    )
    composer = MailComposer(receiver)
    async with SmtpReceiver(receiver, tenant.security, composer=composer) as smtp:
        for raw in stored:
            await smtp.deliver(mail_to_exchange(raw))
    reports = []
    for raw in stored:
        original = _parse(raw)
        subject = _decoded("Fwd: " + str(original["Subject"]))
        _, _, forwarded = dovecot.wait_for_message(
            target.address,
            predicate=lambda m, s=subject: _decoded(str(_parse(m[2])["Subject"])) == s,
        )
        after = leaves(_parse(forwarded))
        before = [leaf for leaf in leaves(original) if not leaf[0].startswith("multipart/")]
        missing = [b for b in before if not any(_same(b, a) for a in after)]
        assert not missing, subject
        reports.append(_parse(forwarded).get_content_type())
    assert reports == [
        "multipart/alternative",
        "multipart/mixed",
        "multipart/mixed",
        "multipart/report",
    ]


def _decoded(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))
