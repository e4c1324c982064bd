"""What the failures of every mail protocol (SMTP, IMAP, POP3) share, worded once: the
outer level of a connection that could not be opened, and the refusal to send a secret over
a link that is not encrypted.

A running flow and ``flowrt test`` both build these texts here, so an operator who compares
the two at 3 a.m. reads the same words. Each protocol's own failures stay in its own errors
module; this module imports no protocol library.
"""

from __future__ import annotations

from flowrt.errors import MessagingException, is_retryable

__all__ = ["clear_text_refused", "connect_text", "could_not_connect"]

NAMES = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3"}
IMPLICIT_TLS = {"smtp": "smtps", "imap": "imaps", "pop3": "pop3s"}


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_text(protocol: str, host: str, port: int) -> str:
    """JavaMail's words, as the reference documents them: ``Could not connect to SMTP host:
    smtp.mail.yahoo.com, port: 465;`` (the ``;`` leads to the nested exception)."""
    return f"Could not connect to {NAMES[protocol]} host: {host}, port: {port};"


def could_not_connect(
    protocol: str,
    host: str,
    port: int,
    cause: BaseException | None = None,
    *,
    hint: str | None = None,
) -> MessagingException:
    """``MessagingException: Could not connect to IMAP host: h, port: p;`` over ``cause``
    (set as its ``__cause__``): as retryable as the cause says (a refused SOCKS rule or an
    untrusted certificate does not heal; a refused port may), not retryable without one."""
    error = MessagingException(
        connect_text(protocol, host, port),
        hint=hint,
        retryable=is_retryable(cause) if cause is not None else False,
    )
    if cause is not None:
        error.__cause__ = cause
    return error


def clear_text_refused(
    *,
    protocol: str,
    auth: str,
    credential: str,
    host: str,
    port: int,
    protection: str,
) -> MessagingException:
    """``auth plain`` (a password) or ``auth oauth2`` (a bearer token) over a link that is
    not encrypted, without ``allow-plaintext-auth``: refused before anything is sent."""
    what = "password" if auth == "plain" else "OAuth2 token"
    return MessagingException(
        f"refusing to send the {what} of credential '{credential}' in clear: the connection "
        f"to {_address(host, port)} is not encrypted (protection {protection})",
        hint=f"use protection starttls-mandatory or {IMPLICIT_TLS[protocol]}, or auth "
        "encrypted (CRAM-MD5, only a hash is sent); allow-plaintext-auth only where the link "
        "is protected otherwise (a trusted network)",
        retryable=False,
    )
