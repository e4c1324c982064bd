"""DATA for a large message, written in pieces instead of as one block.

``aiosmtplib.SMTP.data`` turns the message into its wire form in whole copies (line
endings made CRLF, lines starting with a dot doubled, the end line added) and hands the
result to the transport, which keeps what the socket does not take at once: a 34 MB mail
(a 25 MB attachment in base64) held three to four more copies of itself while it was sent.
Here the same wire form is made piece by piece (cut after a line break, so each piece
starts a line), each piece written when the transport has room for it.

Small messages go through ``SMTP.data`` as before; so does every message when the
installed aiosmtplib lacks what this needs (its command lock and flow control), which a
test notices.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, TypeAlias

from aiosmtplib import (
    SMTP,
    SMTPDataError,
    SMTPResponse,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

__all__ = [
    "PIECE",
    "STREAM_ABOVE",
    "Message",
    "Pieces",
    "chunk_bytes",
    "end_line",
    "message_bytes",
    "send_data",
    "streams",
    "wire_pieces",
    "write_pieces",
]

STREAM_ABOVE = 1024 * 1024  # smaller messages: one copy more does not matter
PIECE = 256 * 1024

_START_INPUT = 354
_COMPLETED = 250
# the same rules as aiosmtplib's: any line break becomes CRLF; a dot at a line start doubled
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


class Pieces(Protocol):
    """A message made a step at a time (``mime.pieces.MailPieces``)."""

    def __len__(self) -> int: ...

    def __bytes__(self) -> bytes: ...

    def chunks(self) -> Iterable[bytes]: ...

    def endswith(self, suffix: tuple[bytes, ...]) -> bool: ...

    def isascii(self) -> bool: ...


Message: TypeAlias = bytes | Pieces


def message_bytes(message: Message) -> bytes:
    return message if isinstance(message, bytes) else bytes(message)


def wire_pieces(message: Message, size: int = PIECE) -> Iterator[bytes]:
    """The message as DATA carries it, in pieces of about ``size`` (then :func:`end_line`)."""
    for piece in _line_pieces(message, size):
        yield (
            piece
            if _wire_ready(piece)
            else _LEADING_DOT.sub(b"..", _LINE_ENDINGS.sub(b"\r\n", piece))
        )


def _wire_ready(piece: bytes) -> bool:
    """Nothing for the two rules to change: every line break a CRLF, no line starting with
    a dot. True for most pieces (the composer writes CRLF); a few scans in C find out faster
    than the rules' regular expressions would rewrite them."""
    return _crlf_only(piece) and not piece.startswith(b".") and b"\n." not in piece


def _crlf_only(data: bytes) -> bool:
    """Every CR and every LF in ``data`` is part of a CRLF (counted in C, no regex)."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf


def _line_pieces(message: Message, size: int) -> Iterator[bytes]:
    """The message's bytes in pieces of about ``size`` or more, each cut after a line feed
    (the last excepted), so that each starts a line and no CR LF is split."""
    chunks: Iterable[bytes] = (message,) if isinstance(message, bytes) else message.chunks()
    carry = bytearray()
    for chunk in chunks:
        pos, end = 0, len(chunk)
        while pos < end:
            want = max(size - len(carry), 1)
            cut = chunk.find(b"\n", min(end, pos + want) - 1)
            if cut < 0:
                carry += chunk[pos:]
                break
            if carry:
                carry += chunk[pos : cut + 1]
                yield bytes(carry)
                carry.clear()
            else:
                yield chunk[pos : cut + 1]
            pos = cut + 1
    if carry:
        yield bytes(carry)


def chunk_bytes(message: Message) -> bytes:
    """The message as one BDAT chunk carries it (RFC 3030 CHUNKING): counted, so no dot is
    doubled and no end line follows; line breaks made CRLF, and one added at the end when
    missing, so that the server stores what DATA would have given it."""
    data = message_bytes(message)
    if not _crlf_only(data):
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def end_line(message: Message) -> bytes:
    """The line that ends DATA; a message that does not end with a line break gets one."""
    return b".\r\n" if message.endswith((b"\n", b"\r")) else b"\r\n.\r\n"


def streams(smtp: SMTP) -> bool:
    """Whether this aiosmtplib connection can take a message in pieces."""
    protocol: Any = smtp.protocol
    return (
        protocol is not None
        and getattr(protocol, "_command_lock", None) is not None
        and callable(getattr(protocol, "_drain_helper", None))
        and callable(getattr(protocol, "read_response", None))
        and callable(getattr(protocol, "write", None))
    )


async def send_data(smtp: SMTP, message: Message, *, timeout: float | None) -> SMTPResponse:
    """DATA, the message, and the server's reply to it; raises as ``SMTP.data`` does
    (SMTPDataError for a refusal, SMTPServerDisconnected, SMTPTimeoutError)."""
    if len(message) <= STREAM_ABOVE or not streams(smtp):
        return await smtp.data(message_bytes(message), timeout=timeout)
    protocol: Any = smtp.protocol
    try:
        async with protocol._command_lock:
            start = await _ask(protocol, b"DATA\r\n", timeout)
            if start.code != _START_INPUT:
                raise SMTPDataError(start.code, start.message)
            await write_pieces(protocol.write, protocol._drain_helper, message, timeout)
            response = await _ask(protocol, end_line(message), timeout)
            if response.code != _COMPLETED:
                raise SMTPDataError(response.code, response.message)
            return response
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()
        raise


async def write_pieces(
    write: Callable[[bytes], None],
    drain: Callable[[], Awaitable[None]] | None,
    message: Message,
    timeout: float | None,
) -> None:
    """The message's DATA pieces (not its end line), each written once ``drain`` says the
    transport has room; raises SMTPTimeoutError or SMTPServerDisconnected as SMTP.data
    would. Both the one-command path and a pipelined group write through it."""
    try:
        async with asyncio.timeout(timeout):
            for piece in wire_pieces(message):
                write(piece)
                if drain is not None:
                    await drain()
    except TimeoutError as exc:
        raise SMTPTimeoutError("Timed out writing the message") from exc
    except ConnectionError as exc:
        raise SMTPServerDisconnected("Connection lost") from exc


async def _ask(protocol: Any, line: bytes, timeout: float | None) -> SMTPResponse:
    if hasattr(protocol, "_response_pending"):
        protocol._response_pending = True  # a reply is awaited: not unsolicited data
    protocol.write(line)
    response: SMTPResponse = await protocol.read_response(timeout=timeout)
    return response
