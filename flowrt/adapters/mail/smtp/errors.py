"""SMTP failures in the chain's words: what the receiver raises, built in one place.

aiosmtplib, ``ssl`` and the connection layer each fail in their own way; this module turns
them into the JavaMail names operators know (``MessagingException``,
``AuthenticationFailedException``, ``SendFailedException``, ``MailConnectException``) with the
cause kept below and a hint beside. A reply from the server *is* the message (``535 5.7.8
...``), so the aiosmtplib exception that carried it is not kept as a level of its own: its
``str`` is a tuple repr that would only repeat the reply.

Retryability follows the reply class: 4xx is temporary and may be retried, 5xx is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiosmtplib import SMTPServerDisconnected, SMTPTimeoutError

from flowrt.adapters.mail import errors as mail_errors
from flowrt.adapters.mail.smtp.target import SmtpTarget
from flowrt.errors import (
    IOException,
    MailConnectException,
    MessagingException,
    SendFailedException,
    SocketTimeoutException,
)

__all__ = [
    "all_recipients_refused",
    "connection_dropped_cause",
    "could_not_connect",
    "couldnt_connect",
    "data_refused",
    "dropped",
    "greeting_refused",
    "no_greeting",
    "read_timeout",
    "refused_reply",
    "reply_text",
    "sender_refused",
    "some_recipients_refused",
    "starttls_missing",
    "temporary",
    "too_large",
    "wire_errors",
]

IMPLICIT_TLS_PORT = 465
SUBMISSION_PORT = 587


def temporary(code: int) -> bool:
    """A 4xx reply: the server asks to try again later."""
    return 400 <= code < 500


def reply_text(code: int, message: str) -> str:
    """``550 5.1.1 <x@y>: Recipient address rejected``, on one line."""
    return f"{code} {' '.join(message.split())}".strip()


def could_not_connect(target: SmtpTarget, *, hint: str | None = None) -> MessagingException:
    """The outer level of a failed TLS handshake or refused session (JavaMail's text, worded
    for every protocol in :mod:`flowrt.adapters.mail.errors`); not retryable."""
    return mail_errors.could_not_connect("smtp", target.host, target.port, hint=hint)


def couldnt_connect(target: SmtpTarget, cause: IOException) -> MailConnectException:
    """The outer level of a TCP or SOCKS failure; retryable as its cause says."""
    return MailConnectException(
        f"Couldn't connect to host, port: {target.host}, {target.port}; "
        f"timeout {target.timeout_ms}",
        retryable=cause.retryable,
    )


def no_greeting(target: SmtpTarget, *, tls_at_once: bool) -> MailConnectException:
    """No greeting within the timeout (raise it from its ``__cause__``). ``tls_at_once``:
    a second connection found that the port speaks TLS right away, so the client waited for
    a greeting the server never sends before a TLS handshake."""
    implicit = target.protection == "smtps"
    what = "TLS handshake or server greeting" if implicit else "server greeting"
    cause = SocketTimeoutException(f"Read timed out after {target.timeout:g}s ({what})")
    if tls_at_once:
        hint = (
            f"{target.address} speaks TLS at once (implicit TLS, SMTPS), so it never greets a "
            f"client that waits in clear; use protection smtps for port {target.port}, or port "
            f"{SUBMISSION_PORT} with protection starttls-mandatory"
        )
    elif implicit:
        hint = (
            f"{target.address} accepted the connection but neither completed a TLS handshake nor "
            f"greeted within {target.timeout:g}s; check that it is an SMTPS port (usually "
            f"{IMPLICIT_TLS_PORT}) and that the server is healthy, or raise `timeout`"
        )
    else:
        hint = (
            f"{target.address} accepted the connection but sent no SMTP greeting within "
            f"{target.timeout:g}s; check that it is an SMTP port (25, {SUBMISSION_PORT}) and "
            "that the server is healthy (behind a connector, its mapping), or raise `timeout`"
        )
    error = MailConnectException(
        f"Couldn't connect to host, port: {target.host}, {target.port}; "
        f"timeout {target.timeout_ms}",
        hint=hint,
        retryable=not tls_at_once,
    )
    error.__cause__ = cause
    return error


def greeting_refused(target: SmtpTarget, code: int, message: str) -> MailConnectException:
    reply = reply_text(code, message)
    hint = (
        f"{target.address} does not take mail now ({reply}); the message is retried"
        if temporary(code)
        else f"{target.address} refuses SMTP sessions from this machine ({reply}); ask its "
        "operator, or check the address and port"
    )
    return MailConnectException(
        f"Could not connect to SMTP host: {target.host}, port: {target.port}, response: {reply}",
        hint=hint,
        retryable=temporary(code),
    )


def dropped(
    target: SmtpTarget, during: str, *, reply: str | None = None, greeting: str | None = None
) -> MailConnectException:
    """The server closed the connection while ``during`` (raise it from an IOException).
    ``greeting``: the server had greeted, so it was reached and chose to close."""
    said = f" ({reply})" if reply else ""
    if greeting:
        hint = (
            f"{target.address} greeted ({greeting}) and then closed the connection: it may "
            "limit connections from this machine (rate limit, blocklist, too many sessions) "
            "or be shutting down; check the server's log"
        )
    else:
        hint = (
            f"{target.address} closed the connection; check the server's log (behind a "
            "connector, also the connector's log)"
        )
    return MailConnectException(
        f"Connection to SMTP host: {target.host}, port: {target.port} closed during {during}{said}",
        hint=hint,
        retryable=True,
    )


@contextlib.contextmanager
def wire_errors(
    target: SmtpTarget, waiting_for: str, *, greeting: str | None = None
) -> Iterator[None]:
    """Map a lost connection or a read timeout while ``waiting_for`` to the chain."""
    try:
        yield
    except SMTPTimeoutError as exc:
        outer, cause = read_timeout(target, waiting_for)
        cause.__cause__ = exc  # for the log; the shown chain stops at the IOException
        raise outer from cause
    except (SMTPServerDisconnected, ConnectionError) as exc:
        dropped_cause = connection_dropped_cause()
        dropped_cause.__cause__ = exc
        raise dropped(target, waiting_for, greeting=greeting) from dropped_cause


def starttls_missing(target: SmtpTarget) -> MessagingException:
    """``starttls-mandatory`` against a server that does not offer STARTTLS."""
    return MessagingException(
        f"the SMTP server {target.address} does not offer STARTTLS; protection "
        "starttls-mandatory does not fall back, since falling back would send the "
        "mail (and any password) in clear",
        hint="a missing STARTTLS may be the server's configuration or someone on the path "
        f"removing it; check with `flowrt test smtp {target.address} --protection "
        f"starttls-mandatory`, or use the server's SMTPS port with protection smtps (address "
        f'"{target.host}:{IMPLICIT_TLS_PORT}", protection smtps)',
        retryable=False,
    )


def connection_dropped_cause() -> IOException:
    # The text operators know from the platform's connector troubleshooting.
    return IOException("Connection dropped by server?")


def read_timeout(target: SmtpTarget, waiting_for: str) -> tuple[MessagingException, IOException]:
    """(outer, cause) for a reply that did not come within the timeout."""
    outer = MessagingException(
        f"Exception reading response from SMTP host: {target.host}, port: {target.port}",
        hint=f"{target.address} did not answer within {target.timeout:g}s; raise `timeout` in "
        "the receiver if the server is just slow",
        retryable=True,
    )
    cause = SocketTimeoutException(
        f"Read timed out after {target.timeout:g}s waiting for the reply to {waiting_for}"
    )
    return outer, cause


def refused_reply(
    target: SmtpTarget, what: str, code: int, message: str, *, hint: str | None = None
) -> MessagingException:
    """A command the session needs (EHLO, STARTTLS) was refused."""
    return MessagingException(
        f"{what} refused by {target.address}: {reply_text(code, message)}",
        hint=hint,
        retryable=temporary(code),
    )


def all_recipients_refused(replies: dict[str, str], codes: dict[str, int]) -> SendFailedException:
    every_temporary = all(temporary(c) for c in codes.values())
    listed = "; ".join(f"{a} ({r})" for a, r in replies.items())
    tail = (
        " - every refusal was temporary (4xx), so the message is retried" if every_temporary else ""
    )
    return SendFailedException(
        f"Invalid Addresses: {listed}{tail}",
        invalid=list(replies),
        replies=replies,
        hint=f"the server accepted none of the recipients ({', '.join(replies)}): the mailbox "
        "does not exist, or the server does not take mail for it from this login; check the "
        "to/cc/bcc addresses (a 5.7.1 relay refusal needs auth with a credential the server "
        "relays for)"
        if not every_temporary
        else "the server refused the recipients for now (mailbox full, too many recipients, "
        "rate limit); the retry policy tries again",
        retryable=every_temporary,
    )


def some_recipients_refused(refused: dict[str, str], sent: list[str]) -> SendFailedException:
    listed = "; ".join(f"{a} ({r})" for a, r in refused.items())
    return SendFailedException(
        f"Invalid Addresses: {listed}; the mail was sent to the other recipients "
        f"({', '.join(sent)}) and is not retried, since a retry would send it to them again",
        invalid=list(refused),
        valid_sent=sent,
        replies=refused,
        hint="fix or remove the refused addresses; the accepted recipients already have the mail",
        retryable=False,
    )


def some_recipients_pending(exc: SendFailedException, pending: list[str]) -> SendFailedException:
    """Some recipients have the mail, others were refused for now (4xx): a retry sends it
    to those only, so it may be retried."""
    return SendFailedException(
        f"{exc.message}; {', '.join(pending)} refused for now (4xx): a retry sends it to them only",
        invalid=exc.invalid,
        valid_sent=exc.valid_sent,
        replies=exc.replies,
        hint="the retry policy tries the recipients refused for now again; the recipients "
        "that have the mail do not get it again",
        retryable=True,
    )


def sender_refused(
    sender: str, recipients: list[str], code: int, message: str
) -> SendFailedException:
    reply = reply_text(code, message)
    return SendFailedException(
        f"{reply} (MAIL FROM:<{sender}> refused)",
        valid_unsent=recipients,
        replies={sender: reply},
        hint=f"the server does not accept {sender} as sender for this login; check `from` "
        "and which addresses the account may send as"
        if not temporary(code)
        else None,
        retryable=temporary(code),
    )


def data_refused(
    accepted: list[str], refused: dict[str, str], code: int, message: str, command: str = "DATA"
) -> SendFailedException:
    reply = reply_text(code, message)
    return SendFailedException(
        f"{reply} (the message was refused after {command}; not sent to {', '.join(accepted)})",
        invalid=list(refused),
        valid_unsent=accepted,
        replies=refused,
        hint="the server refused the content (size, policy, spam or virus check); see its reply"
        if not temporary(code)
        else None,
        retryable=temporary(code),
    )


def too_large(
    target: SmtpTarget, recipients: list[str], size: int, limit: int
) -> SendFailedException:
    return SendFailedException(
        f"the mail has {size} bytes, more than {target.address} takes (SIZE {limit}); not sent",
        valid_unsent=recipients,
        hint="send fewer or smaller attachments, or ask the server's operator for a higher "
        "message size limit",
        retryable=False,
    )
