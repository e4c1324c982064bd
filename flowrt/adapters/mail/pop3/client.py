"""A small asyncio POP3 client (RFC 1939, 2449 CAPA, 2595 STLS, 5034 AUTH).

Why our own: there is no maintained asyncio POP3 library, and the protocol is small. What it
does: greeting (with the APOP timestamp), CAPA, STLS (upgrade of the same connection),
USER/PASS, APOP, AUTH with challenges (PLAIN, CRAM-MD5, XOAUTH2), STAT, LIST, UIDL, RETR
(multi-line, dot-unstuffed), DELE, RSET, NOOP, QUIT.

Every read is bounded by the timeout (a half-open connection ends in StoreClosedException
over SocketTimeoutException); a dropped connection is StoreClosedException; an ``-ERR`` reply
is a :class:`~flowrt.adapters.mail.pop3.errors.Pop3ErrorReply` (a MessagingException with
the server's words; every error is built in :mod:`~flowrt.adapters.mail.pop3.errors`), which
the session maps to AuthenticationFailedException where it answers a login. Secrets are
revealed only to build the bytes written to the socket and are never logged or put into
an error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import socket
import ssl
from collections.abc import Callable, Sequence

from flowrt.adapters.mail.pop3 import errors
from flowrt.adapters.mail.pop3.errors import Pop3ErrorReply
from flowrt.adapters.mail.sasl import apop_digest
from flowrt.adapters.mail.sender.client import open_over
from flowrt.errors import StoreClosedException
from flowrt.security.secret import Secret

__all__ = ["Pop3Client"]

Responder = Callable[[bytes], bytes]

_TIMESTAMP = re.compile(rb"<[^<>\s]+@[^<>\s]+>")
_MAX_LINE = 8192  # RFC 2449: 512 octets per response line; be generous, but not unbounded
_READ = 256 * 1024


class _Wire:
    """Buffered reading of status lines and dot-terminated blocks, every wait bounded."""

    def __init__(self, reader: asyncio.StreamReader, client: Pop3Client) -> None:
        self.reader = reader
        self.client = client
        self.buf = bytearray()
        self.pos = 0

    def reset(self) -> None:
        self.buf.clear()
        self.pos = 0

    async def _more(self) -> None:
        try:
            async with asyncio.timeout(self.client.timeout):
                data = await self.reader.read(_READ)
        except TimeoutError:
            self.client.abort()
            timeout = self.client.timeout
            raise errors.no_answer(self.client.where, timeout) from errors.read_timeout(timeout)
        except (ConnectionError, OSError) as exc:
            raise self.client.closed_error(str(exc)) from exc
        if not data:
            raise self.client.closed_error("connection closed by the server")
        self.buf += data

    def _compact(self) -> None:
        # drop what was consumed, before offsets into the buffer are taken
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0

    async def line(self) -> bytes:
        self._compact()
        scan = self.pos
        while True:
            end = self.buf.find(b"\n", scan)
            if end >= 0:
                line = bytes(self.buf[self.pos : end + 1])
                self.pos = end + 1
                return line.rstrip(b"\r\n")
            if len(self.buf) - self.pos > _MAX_LINE:
                self.client.abort()
                raise errors.line_too_long(self.client.where, _MAX_LINE)
            scan = len(self.buf)
            await self._more()

    async def block(self) -> bytes:
        """A multi-line response after its status line: up to ``CRLF.CRLF``, unstuffed."""
        self._compact()
        start = self.pos
        scan = start
        while True:
            if self.buf[start : start + 3] == b".\r\n":
                self.pos = start + 3
                return b""
            end = self.buf.find(b"\r\n.\r\n", scan)
            if end >= 0:
                data = bytes(self.buf[start : end + 2])
                self.pos = end + 5
                return _unstuff(data)
            scan = max(start, len(self.buf) - 4)
            await self._more()


def _unstuff(data: bytes) -> bytes:
    # RFC 1939 3: a line that starts with "." was sent with one more "."
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


class Pop3Client:
    """One POP3 connection. Create with :meth:`start` over a connected socket."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        host: str,
        port: int,
        timeout: float,
    ) -> None:
        self.writer = writer
        self.host = host
        self.port = port
        self.timeout = timeout
        self.wire = _Wire(reader, self)
        self.greeting = ""
        self.apop_timestamp: bytes | None = None
        self.capabilities: dict[str, list[str]] = {}
        self.tls_active = False
        self._closed = False

    @classmethod
    async def start(
        cls,
        sock: socket.socket,
        *,
        host: str,
        port: int,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> Pop3Client:
        """Speak POP3 over ``sock`` (implicit TLS first when ``tls`` is given), read the
        greeting. ssl errors are raised as they are, for the caller to explain."""
        reader, writer = await open_over(
            sock, asyncio.open_connection, host=host, timeout=timeout, tls=tls
        )
        client = cls(reader, writer, host=host, port=port, timeout=timeout)
        client.tls_active = tls is not None
        try:
            line = await client.wire.line()
        except BaseException:
            client.abort()
            raise
        client.greeting = line.decode("utf-8", "replace")
        if not line.startswith(b"+OK"):
            client.abort()
            raise errors.greeting_refused(client.where, client.greeting)
        stamp = _TIMESTAMP.search(line)
        client.apop_timestamp = stamp.group(0) if stamp else None
        return client

    # -- state

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def closed(self) -> bool:
        return self._closed or self.writer.is_closing()

    def closed_error(self, reason: str) -> StoreClosedException:
        self._closed = True
        return errors.closed(self.where, reason)

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    def sasl(self, mechanism: str) -> bool:
        return mechanism.upper() in (m.upper() for m in self.capabilities.get("SASL", []))

    def abort(self) -> None:
        self._closed = True
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    def ssl_object(self) -> ssl.SSLObject | None:
        obj = self.writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    # -- commands

    def _send(self, line: bytes) -> None:
        if self.closed:
            raise self.closed_error("connection closed")
        self.writer.write(line + b"\r\n")

    async def _reply(self, what: str) -> str:
        line = await self.wire.line()
        text = line.decode("utf-8", "replace")
        if line.startswith(b"+OK"):
            return text[3:].strip()
        if line.startswith(b"-ERR"):
            raise errors.err_reply(self.where, what, text[4:].strip())
        self.abort()
        raise errors.unexpected_reply(self.where, what, text)

    async def command(self, line: str, what: str | None = None) -> str:
        """Send one command, return the text after ``+OK`` (raises Pop3ErrorReply)."""
        self._send(line.encode("utf-8"))
        return await self._reply(what or line.split(" ", 1)[0])

    async def multiline(self, line: str, what: str | None = None) -> tuple[str, bytes]:
        status = await self.command(line, what)
        return status, await self.wire.block()

    async def capa(self) -> dict[str, list[str]]:
        """CAPA; a server without it (-ERR) has no capabilities we can rely on."""
        try:
            _, block = await self.multiline("CAPA")
        except Pop3ErrorReply:
            self.capabilities = {}
            return {}
        caps: dict[str, list[str]] = {}
        for line in block.decode("utf-8", "replace").splitlines():
            words = line.split()
            if words:
                caps[words[0].upper()] = words[1:]
        self.capabilities = caps
        return caps

    async def stls(self, context: ssl.SSLContext) -> None:
        """STLS, then the handshake on the same connection; ssl errors raised as they are."""
        await self.command("STLS")
        # clear-text bytes after +OK (injected by a man in the middle?) are not kept
        self.wire.reset()
        try:
            await self.writer.start_tls(
                context, server_hostname=self.host, ssl_handshake_timeout=self.timeout
            )
        except BaseException:
            self.abort()
            raise
        self.tls_active = True
        self.capabilities = {}
        await self.capa()

    async def user_pass(self, user: str, password: Secret) -> None:
        await self.command(f"USER {user}", "USER")
        self._send(b"PASS " + password.reveal().encode("utf-8"))
        await self._reply("PASS")

    async def apop(self, user: str, password: Secret) -> None:
        if self.apop_timestamp is None:
            raise errors.no_apop(self.where)
        await self.command(f"APOP {user} {apop_digest(self.apop_timestamp, password)}", "APOP")

    async def auth(
        self, mechanism: str, responders: Sequence[Responder], *, initial: bytes | None = None
    ) -> None:
        """AUTH MECHANISM with an optional initial response (RFC 5034); each ``+ base64``
        challenge is answered by the next responder, then with ``*`` (cancel)."""
        steps = list(responders)
        if initial is not None:
            encoded = base64.b64encode(initial).decode("ascii") or "="
            self._send(f"AUTH {mechanism} ".encode() + encoded.encode("ascii"))
        else:
            self._send(f"AUTH {mechanism}".encode())
        while True:
            line = await self.wire.line()
            if line.startswith(b"+ ") or line == b"+":
                try:
                    challenge = base64.b64decode(line[2:].strip(), validate=True)
                except binascii.Error:
                    challenge = b""
                if not steps:
                    self._send(b"*")
                    continue
                self._send(base64.b64encode(steps.pop(0)(challenge)))
                continue
            text = line.decode("utf-8", "replace")
            if line.startswith(b"+OK"):
                return
            if line.startswith(b"-ERR"):
                raise errors.err_reply(self.where, f"AUTH {mechanism}", text[4:].strip())
            self.abort()
            raise errors.unexpected_reply(self.where, f"AUTH {mechanism}", text)

    async def stat(self) -> tuple[int, int]:
        words = (await self.command("STAT")).split()
        return int(words[0]), int(words[1])

    async def uidl(self) -> dict[int, str] | None:
        """Message number -> unique ID; None when the server has no UIDL."""
        try:
            _, block = await self.multiline("UIDL")
        except Pop3ErrorReply:
            return None
        out: dict[int, str] = {}
        for line in block.decode("utf-8", "replace").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].isdigit():
                out[int(words[0])] = words[1]
        return out

    async def list(self) -> dict[int, int]:
        """Message number -> size in octets."""
        _, block = await self.multiline("LIST")
        out: dict[int, int] = {}
        for line in block.decode("ascii", "replace").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
                out[int(words[0])] = int(words[1])
        return out

    async def retr(self, number: int) -> bytes:
        _, block = await self.multiline(f"RETR {number}", f"RETR {number}")
        return block

    async def dele(self, number: int) -> None:
        await self.command(f"DELE {number}")

    async def rset(self) -> None:
        await self.command("RSET")

    async def noop(self) -> None:
        await self.command("NOOP")

    async def quit(self) -> None:
        """QUIT: the server applies the DELEs now (the UPDATE state). Raises when that is
        not confirmed, so that the caller does not think mails were deleted."""
        try:
            await self.command("QUIT")
        finally:
            self.abort()

    async def close(self) -> None:
        """Leave without applying deletions (no QUIT) and without raising."""
        self.abort()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
