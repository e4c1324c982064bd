"""One mail transaction on an open session: MAIL FROM, RCPT TO each recipient, DATA.

Unlike ``aiosmtplib.SMTP.sendmail`` this keeps every recipient's reply (the MPL shows what
the server said to each address) and tells apart where a failure happened, which decides
what may be done next:

* a refused sender, all recipients refused, or refused content: nothing was sent; RSET keeps
  the connection usable and :class:`~flowrt.errors.SendFailedException` says whether a retry
  can help (4xx) or not (5xx);
* some recipients refused: the mail goes to the others, and the caller reports the refusals
  (see :func:`flowrt.adapters.mail.smtp.errors.some_recipients_refused`);
* the connection lost before the server confirmed the data: a
  :class:`~flowrt.errors.MailConnectException`, which the receiver retries once on a fresh
  connection with the same bytes.

When the server offers PIPELINING (RFC 2920), MAIL FROM, every RCPT TO and DATA go in one
write and their replies are read in order (:mod:`~flowrt.adapters.mail.smtp.pipelining`);
the data follows the 354. Two round trips instead of three plus one per recipient, with the
same replies kept and the same failures raised. When it offers CHUNKING too (RFC 3030), the
message goes in that same write as one ``BDAT n LAST`` chunk: one round trip.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence

from aiosmtplib import SMTPResponse, SMTPResponseException, SMTPStatus
from aiosmtplib.email import quote_address

from flowrt.adapters.mail.smtp.data import STREAM_ABOVE, Message, chunk_bytes, send_data
from flowrt.adapters.mail.smtp.errors import (
    all_recipients_refused,
    connection_dropped_cause,
    data_refused,
    dropped,
    reply_text,
    sender_refused,
    too_large,
    wire_errors,
)
from flowrt.adapters.mail.smtp.pipelining import pipelined
from flowrt.adapters.mail.smtp.session import SmtpSession
from flowrt.errors import MessagingException

_CLOSING = 421  # "service not available, closing transmission channel"
# aiosmtplib's timeout covers writing the whole message and waiting for the reply; a large
# mail on a slow link needs longer than a command does. Allow 128 KiB/s on top of it.
_DATA_BYTES_PER_SECOND = 128 * 1024
# A bare addr-spec: dot-atom-ish or quoted local part, a domain or an address literal. No
# whitespace, angle brackets or controls anywhere: aiosmtplib would not refuse
# "a@example.com\r\nRSET" but quietly send to "a@example.com"; flowrt sends exactly the
# address it was given, or nothing.
_ADDR_SPEC = re.compile(
    r'(?:"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"|[^\s<>()\[\],;:"\\@\x00-\x1f\x7f]+)'
    r"@(?:[^\s<>()\[\],;:\"\\@\x00-\x1f\x7f]+|\[[^\s\[\]\\\x00-\x1f\x7f]+\])"
)


@dataclasses.dataclass(frozen=True)
class TransactionResult:
    """What the server said: per accepted and per refused recipient, and to the data."""

    accepted: tuple[str, ...]
    refused: dict[str, str]  # address -> reply
    replies: dict[str, str]  # every recipient -> its RCPT reply
    data_reply: str


async def send_transaction(
    session: SmtpSession,
    sender: str,
    recipients: Sequence[str],
    data: Message,
    *,
    chunking: bool = True,
) -> TransactionResult:
    """Send ``data`` (already serialized, CRLF line ends) from ``sender`` to ``recipients``;
    ``chunking=False``: DATA even where the server offers CHUNKING (the receiver's
    ``chunking off``)."""
    smtp = session.smtp
    target = session.target
    for address in (sender, *recipients):
        if not _ADDR_SPEC.fullmatch(address):
            raise _unsendable(address)
    limit = _size_limit(session)
    if limit and len(data) > limit:
        raise too_large(session.target, list(recipients), len(data), limit)
    mail_options = _mail_options(session, sender, recipients, data)
    encoding = "utf-8" if "SMTPUTF8" in mail_options else "ascii"
    if session.supports("pipelining"):
        chunked = chunking and _chunks(session, data)
        return await _pipelined(
            session, sender, recipients, data, mail_options, encoding, chunked=chunked
        )
    try:
        with wire_errors(target, "MAIL FROM"):
            await smtp.mail(sender, options=mail_options, encoding=encoding)
    except ValueError:  # aiosmtplib checks each address before it goes on a command line
        raise _unsendable(sender) from None
    except SMTPResponseException as exc:
        _closing(session, exc, "MAIL FROM")
        await _reset(session)
        raise sender_refused(sender, list(recipients), exc.code, exc.message) from None

    accepted: list[str] = []
    refused: dict[str, str] = {}
    codes: dict[str, int] = {}
    replies: dict[str, str] = {}
    for address in recipients:
        try:
            with wire_errors(target, "RCPT TO"):
                response = await smtp.rcpt(address, encoding=encoding)
        except ValueError:
            await _reset(session)  # nothing was sent yet: drop the whole envelope
            raise _unsendable(address) from None
        except SMTPResponseException as exc:
            _closing(session, exc, "RCPT TO")
            refused[address] = replies[address] = reply_text(exc.code, exc.message)
            codes[address] = exc.code
            continue
        accepted.append(address)
        replies[address] = reply_text(response.code, response.message)

    if not accepted:
        await _reset(session)
        raise all_recipients_refused(refused, codes)

    try:
        with wire_errors(target, "DATA"):
            timeout = target.timeout + len(data) / _DATA_BYTES_PER_SECOND
            response = await send_data(smtp, data, timeout=timeout)
    except SMTPResponseException as exc:
        _closing(session, exc, "DATA")
        await _reset(session)
        raise data_refused(accepted, refused, exc.code, exc.message) from None
    session.transactions += 1
    return TransactionResult(
        accepted=tuple(accepted),
        refused=refused,
        replies=replies,
        data_reply=reply_text(response.code, response.message),
    )


_RCPT_OK = (SMTPStatus.completed, SMTPStatus.will_forward)


async def _pipelined(
    session: SmtpSession,
    sender: str,
    recipients: Sequence[str],
    data: Message,
    mail_options: Sequence[str],
    encoding: str,
    *,
    chunked: bool,
) -> TransactionResult:
    """The transaction as one group (MAIL, RCPTs, DATA), then the data after a 354. Every
    reply of the group is read before anything is decided, so that the connection stays in
    step for the RSET after a refusal.

    A server that offers CHUNKING (RFC 3030: Postfix, Exchange, Gmail) takes the message
    itself in the group, as one ``BDAT n LAST`` chunk: one write and one round trip per
    mail instead of two. The chunk is counted, so a server that refused the sender or
    every recipient reads it and refuses it, and stays in step. Messages above
    STREAM_ABOVE go in pieces after DATA, as before."""
    target = session.target
    options = b"".join(b" " + option.encode("ascii") for option in mail_options)
    chunk = chunk_bytes(data) if chunked else None
    command = "DATA" if chunk is None else "BDAT"
    commands = [
        b"MAIL FROM:" + _quoted(sender, encoding) + options,
        *(b"RCPT TO:" + _quoted(address, encoding) for address in recipients),
        b"DATA" if chunk is None else b"BDAT %d LAST" % len(chunk),
    ]
    data_timeout = target.timeout + len(data) / _DATA_BYTES_PER_SECOND
    ended: SMTPResponse | None = None
    with pipelined(session.smtp) as group:
        group.send(commands, chunk or b"")

        async def next_reply(during: str, timeout: float = target.timeout) -> SMTPResponse:
            with wire_errors(target, during):
                got = await group.reply(timeout)
            if got.code == _CLOSING:  # the server closes: the rest of the group is lost
                raise dropped(
                    target, during, reply=reply_text(got.code, got.message)
                ) from connection_dropped_cause()
            return got

        mail = await next_reply("MAIL FROM")
        rcpts = [await next_reply("RCPT TO") for _address in recipients]
        start = await next_reply(command, target.timeout if chunk is None else data_timeout)
        accepted = [a for a, r in zip(recipients, rcpts, strict=True) if r.code in _RCPT_OK]
        go = mail.code == SMTPStatus.completed and accepted
        if chunk is None and start.code == SMTPStatus.start_input:
            if go:
                with wire_errors(target, "DATA"):
                    await group.write_message(data, data_timeout)
            else:  # DATA taken with nothing to send (RFC 2920): end it empty
                group.write(b".\r\n")
            ended = await next_reply("DATA", data_timeout)

    if mail.code != SMTPStatus.completed:
        _closing(session, SMTPResponseException(mail.code, mail.message), "MAIL FROM")
        await _reset(session)
        raise sender_refused(sender, list(recipients), mail.code, mail.message)
    refused: dict[str, str] = {}
    codes: dict[str, int] = {}
    replies: dict[str, str] = {}
    for address, reply in zip(recipients, rcpts, strict=True):
        replies[address] = reply_text(reply.code, reply.message)
        if reply.code not in _RCPT_OK:
            _closing(session, SMTPResponseException(reply.code, reply.message), "RCPT TO")
            refused[address] = replies[address]
            codes[address] = reply.code
    if not accepted:
        await _reset(session)
        raise all_recipients_refused(refused, codes)
    final = ended if ended is not None else start
    if final.code != SMTPStatus.completed:
        _closing(session, SMTPResponseException(final.code, final.message), command)
        await _reset(session)
        raise data_refused(accepted, refused, final.code, final.message, command)
    session.transactions += 1
    return TransactionResult(
        accepted=tuple(accepted),
        refused=refused,
        replies=replies,
        data_reply=reply_text(final.code, final.message),
    )


def _quoted(address: str, encoding: str) -> bytes:
    try:
        return _quote(address, encoding)
    except ValueError:  # aiosmtplib refuses what could end a command line
        raise _unsendable(address) from None


@functools.lru_cache(maxsize=1024)
def _quote(address: str, encoding: str) -> bytes:
    # a flow sends to the same few addresses again and again; parsing one costs more than
    # the rest of its command line
    return quote_address(address).encode(encoding)


def _chunks(session: SmtpSession, data: Message) -> bool:
    """Whether the message goes as one BDAT chunk (see :func:`_pipelined`)."""
    return len(data) <= STREAM_ABOVE and session.supports("chunking")


def _size_limit(session: SmtpSession) -> int:
    """The server's SIZE limit (RFC 1870), 0 when it names none."""
    value = session.smtp.esmtp_extensions.get("size", "")
    return int(value) if value.isdigit() else 0


def _mail_options(
    session: SmtpSession, sender: str, recipients: Sequence[str], data: Message
) -> list[str]:
    options: list[str] = []
    if session.supports("size"):
        options.append(f"SIZE={len(data)}")
    if not data.isascii() and session.supports("8bitmime"):
        options.append("BODY=8BITMIME")
    if not (sender.isascii() and all(r.isascii() for r in recipients)):
        if not session.supports("smtputf8"):
            raise MessagingException(
                f"{session.target.address} does not support SMTPUTF8, so it cannot take "
                "addresses with non-ASCII characters",
                hint="use ASCII addresses (an IDN domain in its xn-- form)",
                retryable=False,
            )
        options.append("SMTPUTF8")
    return options


def _unsendable(address: str) -> MessagingException:
    """An address that could end an SMTP command line (the composer checks this first)."""
    return MessagingException(
        f"the address {address!r} cannot be sent: it has characters that are not allowed in "
        "an SMTP mailbox (spaces, angle brackets, control characters)",
        hint="check the from/to/cc/bcc values and the headers they come from",
        retryable=False,
    )


def _closing(session: SmtpSession, exc: SMTPResponseException, during: str) -> None:
    """A 421 reply means the server is closing the connection: nothing was sent."""
    if exc.code == _CLOSING or not session.alive:
        reply = reply_text(exc.code, exc.message)
        raise dropped(session.target, during, reply=reply) from connection_dropped_cause()


async def _reset(session: SmtpSession) -> None:
    """RSET after a refusal so that the connection can be reused; a failure drops it."""
    try:
        with wire_errors(session.target, "RSET"):
            await session.smtp.rset()
    except (MessagingException, SMTPResponseException):
        session.abort()
