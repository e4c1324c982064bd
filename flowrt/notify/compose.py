"""The text of an alert mail, its digest of held-back alerts, and the mail itself.

What a mail says comes from :class:`~flowrt.notify.rules.Event`: what happened, the chain's
summary and the hint, the MPL ID and the command that shows the entry. The message content is
added only when the rule says so (``--include-content``). Nothing here can hold a secret: the
events are built from the MPL, the runtime status and the keystore's public certificates.
"""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Sequence
from email.message import EmailMessage

from flowrt.notify.config import NotifyServer, Rule
from flowrt.notify.rules import Event, iso
from flowrt.notify.store import Attempt

__all__ = ["alert_text", "build_mail", "digest_text", "test_text"]

_SUBJECT_LIMIT = 150
_DIGEST_LINES = 20


def alert_text(rule: Rule, event: Event) -> tuple[str, str]:
    """Subject and body of the alert ``rule`` raises for ``event``."""
    title = " ".join(event.title.split())  # one header line, whatever a server replied
    subject = title if len(title) <= _SUBJECT_LIMIT else title[: _SUBJECT_LIMIT - 3] + "..."
    lines = [f"What happened: {event.what}"]
    if event.summary:
        lines.append(f"Error: {event.summary}")
    if event.hint:
        lines.append(f"Hint: {event.hint}")
    if event.mpl_id:
        lines += [f"MPL ID: {event.mpl_id}", f"Details: flowrt mpl show {event.mpl_id}"]
    if event.chain:
        lines += ["", "Chain:", *(f"  {line}" for line in event.chain.splitlines())]
    if rule.include_content and event.content:
        lines += ["", "Message content (this rule includes it):", event.content]
    lines += ["", f"-- rule {rule.name} ({rule.trigger}, flow {rule.flow})"]
    return subject, "\n".join(lines) + "\n"


def digest_text(held: Sequence[Attempt], limit: int) -> str:
    """``N more alerts since ...``: what the limit held back since the last mail."""
    if not held:
        return ""
    lines = [
        "",
        f"{len(held)} more alert(s) since {iso(held[0].created)} were held back by the "
        f"limit of {limit} mail(s) per 24 hours:",
    ]
    for attempt in held[:_DIGEST_LINES]:
        where = f" (flowrt mpl show {attempt.mpl_id})" if attempt.mpl_id else ""
        lines.append(f"  {iso(attempt.created)}  {attempt.subject}{where}")
    if len(held) > _DIGEST_LINES:
        lines.append(f"  ... and {len(held) - _DIGEST_LINES} more (`flowrt notify log`)")
    return "\n".join(lines) + "\n"


def test_text(server: NotifyServer, now: float) -> tuple[str, str]:
    return (
        "test mail from flowrt",
        f"This is a test of the tenant's notification mail server {server.address} "
        f"({server.protection}), sent at {iso(now)}.\nAlerts will come from {server.sender}.\n",
    )


def build_mail(
    server: NotifyServer, recipient: str, subject: str, body: str, *, now: float
) -> bytes:
    """The mail as it goes on the wire (CRLF line ends)."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = server.sender
    message["To"] = recipient
    message["Subject"] = f"[flowrt] {subject}"
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    message["Message-ID"] = email.utils.make_msgid("flowrt-notify", server.sender.split("@")[-1])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to alerts
    message.set_content(body, charset="utf-8")
    return message.as_bytes()
