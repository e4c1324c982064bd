"""POP3 failures in the chain's words: what the POP3 client, session and check raise, built
in one place (as :mod:`flowrt.adapters.mail.smtp.errors` does for SMTP).

An ``-ERR`` reply is a :class:`Pop3ErrorReply`, a :class:`MessagingException` with the
server's words and its RFC 2449/3206 response code; the session maps it to
``AuthenticationFailedException`` where it answers a login, and to a retryable
``MessagingException`` when the mailbox is locked (``[IN-USE]``). What the IMAP and POP3
sessions share (connect failures, STARTTLS, clear-text refusal, credentials) is mapped in
:mod:`flowrt.adapters.mail.sender.session` and :mod:`flowrt.adapters.mail.sender.endpoint`.
"""

from __future__ import annotations

import re

from flowrt.errors import (
    AuthenticationFailedException,
    MessagingException,
    SocketTimeoutException,
    StoreClosedException,
)

__all__ = [
    "Pop3ErrorReply",
    "auth_refused",
    "closed",
    "err_reply",
    "greeting_refused",
    "line_too_long",
    "mailbox_in_use",
    "neither_cram_md5_nor_apop",
    "no_answer",
    "no_apop",
    "read_timeout",
    "stls_refused",
    "unexpected_reply",
    "user_unsafe",
]

_CODE = re.compile(r"\[([A-Za-z/-]+)\]")


class Pop3ErrorReply(MessagingException):
    """The server answered ``-ERR``; ``code`` is the RFC 2449/3206 response code (``AUTH``,
    ``IN-USE``, ``SYS/TEMP``) when the server gave one."""

    def __init__(self, message: str, *, reply: str, code: str = "") -> None:
        super().__init__(message, retryable=code in ("IN-USE", "SYS/TEMP", "LOGIN-DELAY"))
        self.reply = reply
        self.code = code


# -- the wire


def err_reply(where: str, what: str, reply: str) -> Pop3ErrorReply:
    """``-ERR [CODE] text`` in answer to ``what``."""
    code = _CODE.match(reply)
    return Pop3ErrorReply(
        f"POP3 host {where} refused {what}: -ERR {reply}".rstrip(),
        reply=reply,
        code=code.group(1).upper() if code else "",
    )


def greeting_refused(where: str, greeting: str) -> Pop3ErrorReply:
    return Pop3ErrorReply(f"POP3 host {where} refused the session: {greeting}", reply=greeting)


def unexpected_reply(where: str, what: str, text: str) -> MessagingException:
    return MessagingException(f"POP3 host {where} answered {what} with {text[:80]!r}")


def line_too_long(where: str, limit: int) -> MessagingException:
    return MessagingException(f"POP3 host {where} sent a reply line longer than {limit} bytes")


def closed(where: str, reason: str) -> StoreClosedException:
    return StoreClosedException(
        f"POP3 host {where} closed the connection: {reason}",
        hint="the server restarted or dropped the connection; the next poll reconnects",
    )


def no_answer(where: str, timeout: float) -> StoreClosedException:
    """Raise it from :func:`read_timeout`."""
    return StoreClosedException(
        f"no answer from POP3 host {where} within {timeout:g}s; the connection was closed",
        hint="the server or the network stopped answering (half-open connection?); "
        "the next poll reconnects",
    )


def read_timeout(timeout: float) -> SocketTimeoutException:
    return SocketTimeoutException(f"Read timed out after {timeout:g}s")


# -- the connectivity check


def stls_refused(reply: str) -> MessagingException:
    return MessagingException(f"STLS refused: -ERR {reply}")


# -- login


def no_apop(where: str) -> MessagingException:
    return MessagingException(f"POP3 host {where} does not offer APOP")


def user_unsafe(credential: str | None, hint: str) -> AuthenticationFailedException:
    return AuthenticationFailedException(
        f"the user name of credential '{credential}' contains a space or line break", hint=hint
    )


def mailbox_in_use(user: str, reply: str) -> MessagingException:
    return MessagingException(
        f"the POP3 mailbox of {user} is in use by another session: {reply}",
        hint="another client (or a second runtime) holds the POP3 lock; it is "
        "released when that session ends",
        retryable=True,
    )


def auth_refused(reply: str, hint: str) -> AuthenticationFailedException:
    return AuthenticationFailedException(reply or "-ERR (no text)", hint=hint)


def neither_cram_md5_nor_apop(where: str) -> AuthenticationFailedException:
    return AuthenticationFailedException(
        f"POP3 host {where} offers neither CRAM-MD5 nor APOP (auth encrypted)",
        hint="use auth plain over TLS (protection starttls-mandatory or pop3s)",
    )
