"""IMAP failures in the chain's words: what the IMAP client, session, mailbox and check
raise, built in one place (as :mod:`flowrt.adapters.mail.smtp.errors` does for SMTP).

A tagged ``NO``/``BAD`` reply *is* the message (the server's words are kept as they are);
aioimaplib's ``Abort`` and dropped connections are kept below as causes. What the IMAP and
POP3 sessions share (connect failures, STARTTLS, clear-text refusal, credentials) is mapped
in :mod:`flowrt.adapters.mail.sender.session` and :mod:`flowrt.adapters.mail.sender.endpoint`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from flowrt.errors import (
    AuthenticationFailedException,
    FolderNotFoundException,
    MessagingException,
    SocketTimeoutException,
    StoreClosedException,
)

__all__ = [
    "archive_missing",
    "auth_refused",
    "closed",
    "command_failed",
    "folder_not_found",
    "list_folders_command",
    "missing_folder_hint",
    "move_failed",
    "no_answer",
    "no_cram_md5",
    "no_idle",
    "no_oauth2",
    "read_timeout",
    "refused",
    "select_failed",
    "status_failed",
    "user_has_line_break",
]


# -- the connection


def closed(where: str, what: str, reason: str) -> StoreClosedException:
    return StoreClosedException(
        f"IMAP host {where} closed the connection during {what}: {reason}",
        hint="the server restarted or dropped the connection; the next poll reconnects",
    )


def no_answer(where: str, what: str) -> StoreClosedException:
    """Raise it from :func:`read_timeout`."""
    return StoreClosedException(
        f"no answer from IMAP host {where} to {what}; the connection was closed",
        hint="the server or the network stopped answering (half-open "
        "connection?); the next poll reconnects",
    )


def read_timeout(timeout: float) -> SocketTimeoutException:
    return SocketTimeoutException(f"Read timed out after {timeout:g}s")


# -- commands


def command_failed(what: str, cause: BaseException) -> MessagingException:
    """aioimaplib gave up on a command (raise it from ``cause``)."""
    return MessagingException(f"IMAP {what} failed: {cause}")


def refused(where: str, what: str, result: str, text: str) -> MessagingException:
    return MessagingException(f"IMAP host {where} refused {what}: {result} {text}".rstrip())


def no_idle(where: str) -> MessagingException:
    return MessagingException(f"IMAP host {where} does not offer IDLE")


# -- folders


def folder_not_found(
    folder: str, user: str, where: str, text: str, hint: str
) -> FolderNotFoundException:
    return FolderNotFoundException(
        f"folder {folder!r} not found in the mailbox of {user} on {where}: {text}", hint=hint
    )


def list_folders_command(
    host: str, port: int, protection: str, credential: str, location: str | None = None
) -> str:
    """The connectivity test that lists the mailbox's folders, over the flow's route."""
    via = f" --proxy on-premise --location {location}" if location else ""
    return (
        f"flowrt test imap {host}:{port} --protection {protection} --credential "
        f"{credential or 'NAME'}{via} --list-folders"
    )


def missing_folder_hint(folder: str, names: list[str] | None, list_command: str) -> str:
    """The folders that look like ``folder`` (same letters in another case first), or the
    mailbox's folders; ``names`` None when they could not be listed."""
    if names is None:
        return f"list the folders with `{list_command}`"
    close = similar(folder, names)
    if close:
        found = f"similar folders: {', '.join(close)}"
    else:
        found = f"its folders: {', '.join(sorted(names)[:20]) or 'none'}"
    return f"the mailbox has no folder {folder!r}; {found} (all: `{list_command}`)"


def similar(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Candidates that look like ``name``: same letters in another case first, then close."""
    names = list(candidates)
    same = [c for c in names if c.lower() == name.lower() and c != name]
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.5)
    folded = difflib.get_close_matches(name.lower(), [c.lower() for c in names], n=limit)
    close += [c for c in names if c.lower() in folded]
    return list(dict.fromkeys(same + close))[:limit]


def select_failed(folder: str, result: str, text: str) -> MessagingException:
    return MessagingException(f"SELECT {folder!r} failed: {result} {text}")


def status_failed(folder: str, text: str) -> MessagingException:
    return MessagingException(f"STATUS {folder!r} failed: {text}")


def archive_missing(
    folder: str, user: str, where: str, text: str, list_hint: str
) -> FolderNotFoundException:
    return FolderNotFoundException(
        f"archive folder {folder!r} not found in the mailbox of {user} on {where}: {text}",
        hint=f"create the folder {folder!r} in the mailbox, or fix post-process archive; "
        + list_hint,
    )


def move_failed(folder: str, text: str) -> MessagingException:
    return MessagingException(f"moving mails to {folder!r} failed: {text}")


# -- login


def user_has_line_break(credential: str | None, hint: str) -> AuthenticationFailedException:
    return AuthenticationFailedException(
        f"the user name of credential '{credential}' contains a line break", hint=hint
    )


def no_cram_md5(where: str) -> AuthenticationFailedException:
    return AuthenticationFailedException(
        f"IMAP host {where} does not offer CRAM-MD5 (auth encrypted)",
        hint="use auth plain over TLS (protection starttls-mandatory or imaps)",
    )


def no_oauth2(where: str) -> AuthenticationFailedException:
    return AuthenticationFailedException(
        f"IMAP host {where} offers neither OAUTHBEARER nor XOAUTH2 (auth oauth2)",
        hint="this server does not take OAuth2 tokens; use auth plain over TLS",
    )


def auth_refused(result: str, text: str, hint: str) -> AuthenticationFailedException:
    """The server's words are the message; ``NO (no text)`` when it gave none."""
    return AuthenticationFailedException(text or f"{result} (no text)", hint=hint)
