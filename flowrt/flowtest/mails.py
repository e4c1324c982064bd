"""A test case's input mail as bytes: an .eml file as it is, or an inline mail composed."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage

from flowrt.errors import UsageError
from flowrt.flowtest.spec import Case, InlineMail

__all__ = ["input_bytes"]


def _compose(mail: InlineMail) -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)
    names = {name.lower() for name, _ in mail.headers}
    for name, value in mail.headers:
        message[name] = value
    if "from" not in names:
        message["From"] = "sender@example.com"
    if "to" not in names:
        message["To"] = "mailbox@example.com"
    if "message-id" not in names:
        message["Message-ID"] = "<flowtest@flowrt.invalid>"
    message.set_content(mail.body)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    for item in mail.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        message.add_attachment(
            item.content, maintype=maintype, subtype=subtype or "octet-stream", filename=item.name
        )
    return message.as_bytes()


def input_bytes(case: Case) -> bytes:
    if case.mail is not None:
        return _compose(case.mail)
    assert case.message is not None  # the reader requires one of the two
    try:
        return case.message.read_bytes()
    except OSError as exc:
        raise UsageError(f"{case.message}: cannot be read ({exc.strerror})") from None
