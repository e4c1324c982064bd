"""The one exception tree of flowrt, and the renderer of ``nested exception is:`` chains.

Every error flowrt raises on purpose derives from :class:`FlowrtError`. The CLI turns any
``FlowrtError`` into a message, an optional hint and an exit code; anything else is a bug and
may show a traceback.

The tree::

    FlowrtError
    ├── UsageError                       bad command-line input (exit 2)
    ├── NotFoundError                    a name the tenant does not have (exit 1)
    ├── FlowError                        a flow file that does not parse or validate
    ├── TenantError                      tenant missing, read-only, locked by another runtime
    ├── SecurityError
    │   ├── KeystoreError                bad certificate, unknown alias, wrong PKCS#12 password
    │   └── CredentialError              unknown credential, wrong master key, tampered store
    ├── MplError                         the message-processing log store
    ├── ProcessingError                  something failed while a message was processed
    │   ├── StepException                a pipeline step failed (a raising script, a bad value)
    │   ├── MessagingException           the mail branch, with the JavaMail names operators know
    │   │   ├── AuthenticationFailedException
    │   │   ├── SendFailedException      (invalid, valid-sent and valid-unsent addresses)
    │   │   ├── MailConnectException
    │   │   ├── FolderNotFoundException
    │   │   ├── StoreClosedException
    │   │   └── MailboxLockedException   another runtime's poller holds the mailbox lease
    │   ├── MessageFormatException       a mail that cannot be read (not retryable)
    │   └── IOException                  the causes: what went wrong on the wire
    │       ├── SSLHandshakeException
    │       ├── ConnectException
    │       ├── UnknownHostException
    │       ├── SocketTimeoutException
    │       └── SocksException
    └── ConnectorError                   the on-premise connector's own configuration

Causes are linked with ``raise ... from ...``; :func:`chain_levels` walks ``__cause__`` (and
``__context__`` where no cause was set) so that foreign exceptions, such as a script's
``ValueError``, appear in the chain under their own names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = [
    "AuthenticationFailedException",
    "ChainLevel",
    "ConnectException",
    "ConnectorError",
    "CredentialError",
    "FlowError",
    "FlowrtError",
    "FolderNotFoundException",
    "IOException",
    "KeystoreError",
    "MailConnectException",
    "MailboxLockedException",
    "MessageFormatException",
    "MessagingException",
    "MplError",
    "NotFoundError",
    "ProcessingError",
    "SSLHandshakeException",
    "SecurityError",
    "SendFailedException",
    "SocketTimeoutException",
    "SocksException",
    "StepException",
    "StoreClosedException",
    "TenantError",
    "UnknownHostException",
    "UsageError",
    "chain_levels",
    "chain_of",
    "find_hint",
    "is_retryable",
    "library_cause",
    "render_chain",
    "summary",
    "summary_of_levels",
]


class FlowrtError(Exception):
    """Base of every error flowrt raises on purpose.

    ``hint`` says what to do about it; it is shown beside the message (and beside a chain),
    never inside it. ``exit_code`` is what the CLI exits with.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(FlowrtError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


class NotFoundError(FlowrtError):
    """A name the tenant does not have (flow, lock, ...): exit 1 like any failed check; 2 is
    for a command line that is wrong before the tenant is looked at."""


class FlowError(FlowrtError):
    """A flow file that does not parse or validate; ``diagnostics`` holds every problem."""

    def __init__(
        self, message: str, *, diagnostics: Sequence[Any] = (), hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.diagnostics = list(diagnostics)


class TenantError(FlowrtError):
    """The tenant directory is missing, unreadable, read-only or locked."""


class HandedBack(FlowrtError):
    """The mail is not this process's to finish any more (another runtime node took its
    mailbox over): the runner ends its entry ABANDONED, never with a final status."""


class StoreError(TenantError):
    """The tenant's shared store (PostgreSQL) is unreachable, refuses us, or has another
    schema or another tenant's data."""


class SecurityError(FlowrtError):
    """Keystore, credential store or master key."""


class KeystoreError(SecurityError):
    """A certificate or key that cannot be read, an unknown alias, a refused change."""


class CredentialError(SecurityError):
    """An unknown credential, a wrong master key or a store that was tampered with."""


class MplError(FlowrtError):
    """The message-processing log store cannot be read or written."""


class ConnectorError(FlowrtError):
    """The on-premise connector's configuration is wrong."""


class ProcessingError(FlowrtError):
    """Something failed while a message was being processed.

    ``retryable`` tells the retry policy whether trying again can help (a 4xx reply, a
    dropped connection) or not (a 5xx reply, a wrong password).
    """

    retryable: bool = False

    def __init__(
        self, message: str, *, hint: str | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        if retryable is not None:
            self.retryable = retryable


class StepException(ProcessingError):
    """A pipeline step failed; the message names the step and its flow line."""


class MessagingException(ProcessingError):
    """The mail branch. Names follow JavaMail so that operators recognise them."""


class AuthenticationFailedException(MessagingException):
    """The server refused the credentials; the message carries the server's reply."""


class SendFailedException(MessagingException):
    """Some or all recipients were refused.

    ``invalid`` were refused, ``valid_sent`` were accepted and the mail was sent to them,
    ``valid_unsent`` were accepted but the mail was not sent (the transaction failed).
    ``replies`` maps a refused address to the server's reply.
    """

    def __init__(
        self,
        message: str,
        *,
        invalid: Iterable[str] = (),
        valid_sent: Iterable[str] = (),
        valid_unsent: Iterable[str] = (),
        replies: dict[str, str] | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, hint=hint, retryable=retryable)
        self.invalid = list(invalid)
        self.valid_sent = list(valid_sent)
        self.valid_unsent = list(valid_unsent)
        self.replies = dict(replies or {})


class MailConnectException(MessagingException):
    """The mail server could not be reached."""

    retryable = True


class FolderNotFoundException(MessagingException):
    """The folder named in the flow does not exist in the mailbox."""


class StoreClosedException(MessagingException):
    """The mailbox connection was closed by the server while in use."""

    retryable = True


class MailboxLockedException(MessagingException):
    """The mailbox's lease lock is held by another runtime, so this poll did not run.

    ``key`` is the lock's key (for ``flowrt locks release KEY``), ``holder`` who holds it.
    """

    retryable = True

    def __init__(self, message: str, *, key: str, holder: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key
        self.holder = holder


class MessageFormatException(ProcessingError):
    """A mail that cannot be read at all (empty, or not a mail, such as a PDF file).

    Trying again reads the same bytes, so it is never retryable. Broken but readable MIME is
    not an error: it is recovered and its defects are listed on the exchange.
    """

    retryable = False


class IOException(ProcessingError):
    """A cause on the wire, below a MessagingException."""

    retryable = True


class SSLHandshakeException(IOException):
    """The TLS handshake failed: untrusted chain, hostname mismatch, expired certificate."""

    retryable = False


class ConnectException(IOException):
    """The TCP connection was refused or could not be made."""


class UnknownHostException(IOException):
    """The host name does not resolve."""


class SocketTimeoutException(IOException):
    """A read, write or connect did not finish within the timeout."""


class SocksException(IOException):
    """The SOCKS5 proxy (or the on-premise connector) refused the request.

    ``reply_code`` is the RFC 1928 reply code where there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        reply_code: int | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, hint=hint, retryable=retryable)
        self.reply_code = reply_code


# ----------------------------------------------------------------------------- chains


@dataclasses.dataclass(frozen=True)
class ChainLevel:
    """One level of an exception chain, as kept in the MPL: outermost is level 0."""

    level: int
    type: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "type": self.type, "message": self.message}


def _iter_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def chain_of(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first (each once), including library exceptions."""
    return list(_iter_chain(exc))


def _message_of(exc: BaseException) -> str:
    text = str(exc)
    if not text and isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text or type(exc).__name__


def _shown_chain(exc: BaseException) -> Iterator[BaseException]:
    """The levels a person is shown. An IOException is where a wire error was translated
    (socket, ssl, SOCKS library); what the library raised stays attached as its cause, for
    the runtime log, but is not repeated below it. Anything else, such as a script's own
    ValueError under a StepException, is shown."""
    for e in _iter_chain(exc):
        yield e
        cause = e.__cause__ if e.__cause__ is not None else e.__context__
        if isinstance(e, IOException) and not isinstance(cause, FlowrtError):
            return


def chain_levels(exc: BaseException) -> list[ChainLevel]:
    """The chain from ``exc`` down to its root cause, one :class:`ChainLevel` each."""
    return [
        ChainLevel(level=i, type=type(e).__name__, message=_message_of(e))
        for i, e in enumerate(_shown_chain(exc))
    ]


def render_chain(levels: Sequence[ChainLevel] | BaseException) -> str:
    """Render a chain the way operators know it from JavaMail::

    MessagingException: Could not connect to SMTP host: h, port: 465;
      nested exception is:
    \tSSLHandshakeException: PKIX path building failed: ...
    """
    if isinstance(levels, BaseException):
        levels = chain_levels(levels)
    parts: list[str] = []
    for i, level in enumerate(levels):
        line = f"{level.type}: {level.message}"
        if i == 0:
            parts.append(line)
        else:
            parts.append(f"  nested exception is:\n\t{line}")
    return "\n".join(parts)


def summary(exc: BaseException) -> str:
    """One line for status and log fields: the chain's first line, and its root cause when
    there is one, e.g. ``MailConnectException: Could not connect to IMAP host: h, port: 993;
    caused by SocksException: Connection not allowed by ruleset``."""
    levels = chain_levels(exc)
    if not levels:
        return type(exc).__name__
    return summary_of_levels(levels)


def summary_of_levels(levels: Sequence[ChainLevel]) -> str:
    """:func:`summary` for a chain kept as data (an MPL entry's error levels)."""
    if not levels:
        return ""
    first = f"{levels[0].type}: {levels[0].message}".splitlines()[0]
    if len(levels) == 1:
        return first
    root = f"{levels[-1].type}: {levels[-1].message}".splitlines()[0]
    return f"{first.rstrip(';')}; caused by {root}"


def library_cause(exc: BaseException) -> str | None:
    """The first exception in the chain that flowrt did not raise (aiosmtplib's, ssl's, a
    socket's), as its repr: for the JSON log and debugging, never for a chain level."""
    for e in _iter_chain(exc):
        if not isinstance(e, FlowrtError):
            return repr(e)
    return None


def find_hint(exc: BaseException) -> str | None:
    """The first hint found from the outermost level inwards (outer layers know more context)."""
    for e in _iter_chain(exc):
        hint = getattr(e, "hint", None)
        if hint:
            return str(hint)
    return None


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again may help: decided by the outermost flowrt level that says so."""
    for e in _iter_chain(exc):
        if isinstance(e, ProcessingError):
            return e.retryable
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
    return False
