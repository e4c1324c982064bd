"""RFC 2920 PIPELINING: several commands in one write, their replies read in order.

aiosmtplib sends a command and waits for its reply, one at a time, and its protocol drops
reply bytes that arrive while it waits for none, which replies to a pipelined group do. So
for the group the transport gets a protocol of its own (:class:`Replies`) that keeps every
reply in order; aiosmtplib's protocol is put back right after, when every reply of the
group has been read, and learns of a connection lost meanwhile::

    with pipelined(session.smtp) as group:
        group.send([b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA"])
        mail, rcpt, data = [await group.reply(timeout) for _ in range(3)]

A lost connection, an end of stream or a missing reply raise what aiosmtplib raises
(``SMTPServerDisconnected``, ``SMTPReadTimeoutError``), so callers map them the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator, Sequence
from typing import cast

import aiosmtplib
from aiosmtplib import (
    SMTPReadTimeoutError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
)

from flowrt.adapters.mail.smtp.data import (
    STREAM_ABOVE,
    Message,
    end_line,
    wire_pieces,
    write_pieces,
)

__all__ = ["Replies", "pipelined"]

_MAX_LINE = 8192  # as aiosmtplib: a reply line, and a reply, are bounded
_MAX_REPLY = _MAX_LINE * 4


class Replies(asyncio.Protocol):
    """The transport's protocol while a group is out: replies, parsed, in order."""

    def __init__(self, transport: asyncio.WriteTransport, previous: asyncio.BaseProtocol) -> None:
        self._transport = transport
        self._previous = previous
        self._buffer = bytearray()
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def send(self, commands: Sequence[bytes], then: bytes = b"") -> None:
        """Every command line (without its CRLF), and ``then`` (a BDAT chunk), in one write."""
        self.write(b"".join([*(command + b"\r\n" for command in commands), then]))

    def write(self, data: bytes) -> None:
        if self._error is not None or self._transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self._transport.write(data)

    async def write_message(self, message: Message, timeout: float | None) -> None:
        """The message as DATA carries it, with its end line. A large one goes in pieces,
        each written when the transport has room (as :func:`~.data.send_data` does), so
        that the transport's buffer does not hold a whole copy of it."""
        if len(message) <= STREAM_ABOVE:
            self.write(b"".join(wire_pieces(message, len(message) + 1)) + end_line(message))
            return
        drain = getattr(self._previous, "_drain_helper", None)  # aiosmtplib's flow control
        await write_pieces(self.write, drain, message, timeout)
        self.write(end_line(message))

    async def reply(self, timeout: float | None) -> SMTPResponse:
        """The next reply of the group, waiting at most ``timeout`` seconds for it."""
        while not self._replies:
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            # a timer on the waiter itself, not asyncio.wait_for: that wraps the waiter in a
            # second future and costs a turn of the loop more for every reply
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._replies.popleft()

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        try:
            while (found := self._parse()) is not None:
                self._replies.append(found)
        except SMTPResponseException as exc:
            self._fail(exc)
            return
        if len(self._buffer) > _MAX_REPLY:
            self._fail(SMTPResponseException(SMTPStatus.invalid_response, "Response too long"))
            return
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        lost = SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)
        self._previous.connection_lost(exc)  # aiosmtplib closes its side (session not alive)

    def pause_writing(self) -> None:
        self._previous.pause_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> SMTPResponse | None:
        """One whole reply (all its lines) from the front of the buffer, or None."""
        offset = 0
        lines: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n", offset)
            if end == -1:
                return None
            line = bytes(self._buffer[offset : end + 1])
            if len(line) > _MAX_LINE:
                raise SMTPResponseException(SMTPStatus.invalid_response, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", errors="ignore")
                raise SMTPResponseException(
                    SMTPStatus.invalid_response, f"Malformed SMTP response line: {text}"
                ) from None
            offset = end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))


@contextlib.contextmanager
def pipelined(smtp: aiosmtplib.SMTP) -> Iterator[Replies]:
    """The session's transport with :class:`Replies` as its protocol, for one group.

    A reply that did not come, or a lost connection, closes the session: what the server
    still sends would belong to commands nobody waits for any more."""
    transport = cast("asyncio.WriteTransport | None", smtp.transport)
    if transport is None or transport.is_closing():
        raise SMTPServerDisconnected("Connection lost")
    previous = transport.get_protocol()
    group = Replies(transport, previous)
    transport.set_protocol(group)
    try:
        yield group
    except BaseException:
        transport.set_protocol(previous)
        smtp.close()
        raise
    transport.set_protocol(previous)
