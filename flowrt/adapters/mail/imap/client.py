"""An IMAP4 client on aioimaplib, extended with what the sender needs and aioimaplib lacks.

aioimaplib (2.0) connects by itself and only to a host and port; it has no STARTTLS, no
SASL challenge/response, and a pending command waits forever when the server goes away.
This module keeps aioimaplib's protocol object (its command queueing, tagging and response
routing) and adds, in a subclass and a small facade:

- a connection over a socket we made (:func:`flowrt.net.connect`, so direct or through the
  SOCKS5 connector), with implicit TLS done by ``loop.create_connection(sock=..., ssl=...)``;
- STARTTLS: after the tagged OK, ``loop.start_tls`` wraps the same transport and protocol,
  and capabilities are asked again (the ones from before TLS are not trusted);
- AUTHENTICATE with continuations (PLAIN, CRAM-MD5, XOAUTH2), and LOGIN whose password is put
  into the command line only when it is written to the socket, so that no command object,
  repr or log line holds it;
- a dropped connection fails every pending command at once (StoreClosedException), and every
  wait is bounded by an inactivity timeout: a half-open connection ends in a clear error;
- response parsing without recursion and without re-copying the buffer per line (the stock
  parser recurses once per line: a UID EXPUNGE of 1000 mails exceeded the recursion limit),
  and a FETCH parser that does not rescan the whole response for every line;
- IDLE that returns when the server reports new mail (EXISTS), when the caller's wait is
  over, or raises when the connection drops; EXISTS seen during any command is remembered
  in ``new_mail`` so that a mail arriving during a poll is not missed.

Response parsing (FETCH, LIST, SELECT data, UID sets, folder names) is in
:mod:`flowrt.adapters.mail.imap.parse`. Errors are raised as the flowrt tree:
StoreClosedException (over SocketTimeoutException for timeouts), MessagingException with the
server's words for NO/BAD replies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import re
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aioimaplib.aioimaplib import (
    AUTH,
    CONNECTED,
    CRLF,
    LOGOUT,
    NONAUTH,
    SELECTED,
    Abort,
    Command,
    FetchCommand,
    IdleCommand,
    IMAP4ClientProtocol,
    IncompleteRead,
    Response,
    literal_data_re,
    quoted,
)

from flowrt.adapters.mail.imap import errors
from flowrt.adapters.mail.imap.parse import (
    FETCH_START,
    FetchedMail,
    Literal,
    SelectInfo,
    chunks,
    encode_folder,
    last_line,
    parse_fetch,
    parse_list,
    parse_uid_set,
    response_code,
    response_text,
    select_info,
    uid_set,
)
from flowrt.adapters.mail.sender.client import open_over
from flowrt.errors import StoreClosedException

__all__ = ["ImapClient", "ImapProtocol", "SaslCommand"]

T = TypeVar("T")
Responder = Callable[[bytes], bytes]

_EXISTS = re.compile(rb"\* (\d+) EXISTS\b", re.IGNORECASE)
_BYE = re.compile(rb"\* BYE\b ?(.*)", re.IGNORECASE)
# what a server says of a selected folder's messages changing (new, expunged, flags); not
# FLAGS, the folder's set of keywords (it grows when a search names a new keyword)
_FOLDER_CHANGED = re.compile(
    rb"\* (?:\d+ (?:EXISTS|EXPUNGE|FETCH|RECENT)|VANISHED)\b", re.IGNORECASE
)
_CAPABILITY_CODE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)


class _ConnectionClosed(ConnectionError):
    """Set on pending commands when the connection goes away; mapped by the facade."""


# ----------------------------------------------------------------------------- protocol


class ImapProtocol(IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol with the fixes and additions listed in the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.incomplete_line: bytes = b""
        self.current_command: Command | None = None
        self.greeting: asyncio.Future[bytes] = loop.create_future()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.bye = ""
        self.new_mail = asyncio.Event()  # an EXISTS came (during IDLE or any command)
        self.folder_changes = 0  # responses saying the selected folder changed, so far
        self.last_activity = time.monotonic()
        self._wire_secrets: dict[str, str] = {}

    # -- connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.close_reason = self.bye or (str(exc) if exc else "connection closed by the server")
        error = _ConnectionClosed(self.close_reason)
        pending = [self.pending_sync_command, *self.pending_async_commands.values()]
        for command in pending:
            if command is not None:
                _fail(command, error)
        if not self.greeting.done():
            self.greeting.set_exception(error)
        self.state = LOGOUT
        super().connection_lost(exc)

    def data_received(self, d: bytes) -> None:
        # aioimaplib's own method, less its debug line: that one formats every chunk (a
        # 25 MB mail in full) even when debug logging is off
        self.last_activity = time.monotonic()
        try:
            self._handle_responses(
                self.incomplete_line + d, self._handle_line, self.current_command
            )
            self.incomplete_line = b""
            self.current_command = None
        except IncompleteRead as incomplete:
            self.current_command = incomplete.cmd
            self.incomplete_line = incomplete.data

    def send(self, line: str, scrub: str | None = None) -> None:
        # Secrets are put into the line only here, on the way to the socket.
        for placeholder, secret in self._wire_secrets.items():
            if placeholder in line:
                line = line.replace(placeholder, secret)
        self._wire_secrets.clear()
        self.last_activity = time.monotonic()
        self.transport.write(line.encode("utf-8") + CRLF)

    def write_raw(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.transport.write(data)

    def secret_placeholder(self, wire_text: str) -> str:
        """A token to put into a command instead of a secret; :meth:`send` swaps it back."""
        placeholder = f"flowrt-secret-{secrets.token_hex(8)}"
        self._wire_secrets[placeholder] = wire_text
        return placeholder

    # -- responses

    def _handle_line(self, line: bytes, current_cmd: Command | None) -> Command | None:
        if self.state == CONNECTED and line:
            # the greeting: aioimaplib would start a task asking CAPABILITY; we set the state
            # at once and ask for capabilities ourselves (again after STARTTLS)
            upper = line.upper()
            if upper.startswith(b"* PREAUTH"):
                self.state = AUTH
            elif upper.startswith(b"* OK"):
                self.state = NONAUTH
            else:
                self.state = LOGOUT
            if not self.greeting.done():
                self.greeting.set_result(line)
            return None
        result: Command | None = super()._handle_line(line, current_cmd)
        return result

    def _untagged_response(self, line: bytes) -> Command | None:
        if _FOLDER_CHANGED.match(line):
            self.folder_changes += 1
        if _EXISTS.match(line):
            self.new_mail.set()
        else:
            bye = _BYE.match(line)
            if bye:
                self.bye = bye.group(1).decode("utf-8", "replace").strip() or "BYE"
        result: Command | None = super()._untagged_response(line)
        return result

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        if isinstance(command, SaslCommand):
            self.write_raw(command.answer(line) + CRLF)
            return
        super()._continuation(line)

    def _handle_responses(
        self,
        data: bytes,
        line_handler: Callable[[bytes, Command | None], Command | None],
        current_cmd: Command | None = None,
    ) -> None:
        # aioimaplib's parser, as a loop over offsets (see the module docstring for why).
        pos = 0
        size = len(data)
        while True:
            if pos >= size:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                # pass only what the literal still needs: no copy of the rest of the buffer
                need = current_cmd._expected_size - len(current_cmd._resp_literal_data)
                current_cmd.append_literal_data(data[pos : pos + need])
                pos = min(size, pos + need)
                if current_cmd.wait_literal_data():
                    raise IncompleteRead(current_cmd)
            end = data.find(CRLF, pos)
            if end < 0:
                raise IncompleteRead(current_cmd, data[pos:])
            line = data[pos:end]
            pos = end + 2
            cmd = line_handler(line, current_cmd)
            literal = literal_data_re.match(line)
            if literal:
                if cmd is None:
                    cmd = Command("NIL", "unused", loop=self.loop)
                cmd.begin_literal_data(int(literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None


def _fail(command: Command, error: Exception) -> None:
    # aioimaplib has no public way to fail a command; it does the same on its own timeouts
    command._exception = error
    command._timer.cancel()
    command._event.set()


class SaslCommand(Command):  # type: ignore[misc]
    """AUTHENTICATE MECH; each server challenge (``+ base64``) is answered by ``responder``
    with raw bytes (base64-encoded here). After the responder's last answer an empty line
    is sent, which ends a failed XOAUTH2 exchange (the server then says NO)."""

    def __init__(
        self, tag: str, mechanism: str, responders: Sequence[Responder], *, loop: Any
    ) -> None:
        super().__init__("AUTHENTICATE", tag, mechanism, loop=loop)
        self._responders = list(responders)

    def answer(self, line: bytes) -> bytes:
        text = line[1:].strip()
        try:
            challenge = base64.b64decode(text, validate=True) if text else b""
        except binascii.Error:
            challenge = b""
        if not self._responders:
            return b""
        return base64.b64encode(self._responders.pop(0)(challenge))


class _Spool:
    """A literal as it arrives, in place of aioimaplib's bytearray (which it extends and
    measures): a BytesIO, whose bytes are then had without a copy. With the bytearray, a
    34 MB mail existed twice for a moment, the array and the bytes made of it."""

    __slots__ = ("_buffer", "_size")

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._size = 0

    def extend(self, data: bytes) -> None:
        self._buffer.write(data)
        self._size += len(data)

    def __len__(self) -> int:
        return self._size

    def take(self) -> Literal:
        data = self._buffer.getvalue()
        self._buffer = io.BytesIO()
        return Literal(data)


class _Fetch(FetchCommand):  # type: ignore[misc]
    """A FETCH whose "is a message's response complete?" check is incremental: the stock one
    joins and rescans every line of the response for each new line (quadratic); its
    literals (the mails) are spooled (see :class:`_Spool`)."""

    def __init__(self, tag: str, *args: str, loop: Any) -> None:
        super().__init__(tag, *args, prefix="UID", loop=loop)
        self._depth = 0

    def begin_literal_data(self, expected_size: int, literal_data: bytes = b"") -> bytes:
        self._resp_literal_data = _Spool()
        rest: bytes = super().begin_literal_data(expected_size, literal_data)
        return rest

    def append_to_resp(self, line: bytes | _Spool, result: str = "Pending") -> None:
        if isinstance(line, _Spool):
            super().append_to_resp(line.take(), result)
            return
        super().append_to_resp(line, result)
        if result == "Pending" and type(line) is bytes:
            if FETCH_START.match(line):
                self._depth = 0
            self._depth += line.count(b"(") - line.count(b")")

    def wait_data(self) -> bool:
        return self._depth != 0


# ----------------------------------------------------------------------------- facade


class ImapClient:
    """One IMAP connection. Create with :meth:`start` over a connected socket."""

    def __init__(self, protocol: ImapProtocol, host: str, port: int, timeout: float) -> None:
        self.protocol = protocol
        self.host = host
        self.port = port
        self.timeout = timeout
        self.capabilities: set[str] = set()
        self.greeting = b""
        self.tls_active = False
        self.selected: SelectInfo | None = None

    @classmethod
    async def start(
        cls,
        sock: socket.socket,
        *,
        host: str,
        port: int,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> ImapClient:
        """Speak IMAP over ``sock`` (implicit TLS first when ``tls`` is given), read the
        greeting. ssl errors are raised as they are, for the caller to explain."""
        loop = asyncio.get_running_loop()
        protocol = ImapProtocol(loop)
        opener = functools.partial(loop.create_connection, lambda: protocol)
        await open_over(sock, opener, host=host, timeout=timeout, tls=tls)
        client = cls(protocol, host, port, timeout)
        client.tls_active = tls is not None
        try:
            client.greeting = await client._bounded(asyncio.shield(protocol.greeting), "greeting")
        except BaseException:
            client.abort()
            raise
        return client

    # -- state

    @property
    def closed(self) -> bool:
        return self.protocol.closed.is_set()

    @property
    def state(self) -> str:
        return str(self.protocol.state)

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self.protocol.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    def abort(self) -> None:
        """Drop the connection now (after a timeout the protocol state is unknown)."""
        transport = self.protocol.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def logout(self) -> None:
        """LOGOUT politely (bounded), then close; never raises."""
        try:
            if not self.closed:
                async with asyncio.timeout(min(self.timeout, 5.0)):
                    await self.protocol.execute(Command("LOGOUT", self._tag(), loop=self._loop))
        except Exception:  # the session is over either way
            pass
        finally:
            self.abort()

    # -- running commands

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _tag(self) -> str:
        return str(self.protocol.new_tag())

    def _closed_error(self, what: str) -> StoreClosedException:
        reason = self.protocol.close_reason or "connection closed"
        return errors.closed(f"{self.host}:{self.port}", what, reason)

    async def _bounded(self, awaitable: Awaitable[T], what: str) -> T:
        """Await ``awaitable``; give up when nothing was received or sent for ``timeout``
        seconds (an inactivity timeout: a long FETCH that keeps streaming is fine)."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                idle = time.monotonic() - self.protocol.last_activity
                remaining = self.timeout - idle
                if remaining <= 0:
                    self.abort()
                    raise errors.no_answer(
                        f"{self.host}:{self.port}", what
                    ) from errors.read_timeout(self.timeout)
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if done:
                    try:
                        return task.result()
                    except _ConnectionClosed:
                        raise self._closed_error(what) from None  # its reason is in the message
        finally:
            if not task.done():
                task.cancel()

    async def execute(self, command: Command, what: str | None = None) -> Response:
        """Send ``command`` and wait (bounded) for its tagged response."""
        what = what or str(command.name)
        if self.closed:
            raise self._closed_error(what)
        self.protocol.last_activity = time.monotonic()
        try:
            response: Response = await self._bounded(self.protocol.execute(command), what)
        except Abort as exc:
            raise errors.command_failed(what, exc) from exc
        return response

    def _check(self, response: Response, what: str) -> Response:
        if response.result != "OK":
            raise errors.refused(
                f"{self.host}:{self.port}", what, response.result, response_text(response)
            )
        return response

    # -- session commands

    async def capability(self) -> set[str]:
        response = self._check(
            await self.execute(Command("CAPABILITY", self._tag(), loop=self._loop)), "CAPABILITY"
        )
        caps: set[str] = set()
        for line in response.lines[:-1]:
            if type(line) is bytes:
                words = line.decode("ascii", "replace").split()
                caps.update(w.upper() for w in words if w.upper() != "CAPABILITY")
        self.capabilities = caps
        return caps

    def _capabilities_from(self, response: Response) -> bool:
        """Take capabilities from a ``[CAPABILITY ...]`` code in the tagged reply, if any."""
        match = _CAPABILITY_CODE.search(last_line(response))
        if match is None:
            return False
        self.capabilities = {w.upper() for w in match.group(1).decode("ascii", "replace").split()}
        return True

    async def starttls(self, context: ssl.SSLContext) -> None:
        """STARTTLS, then the handshake on the same transport; ssl errors are raised as they
        are. Capabilities are asked again: those sent in clear text may have been forged."""
        self._check(
            await self.execute(Command("STARTTLS", self._tag(), loop=self._loop)), "STARTTLS"
        )
        # anything the server (or a man in the middle) sent after the OK, still in clear
        # text, must not be read as if it came over TLS
        self.protocol.incomplete_line = b""
        try:
            transport = await self._loop.start_tls(
                self.protocol.transport,
                self.protocol,
                context,
                server_hostname=self.host,
                ssl_handshake_timeout=self.timeout,
            )
        except BaseException:
            self.abort()
            raise
        self.protocol.transport = transport
        self.tls_active = True
        self.capabilities = set()
        await self.capability()

    async def login(self, user: str, password: str) -> Response:
        """LOGIN; the password goes into the line only on the socket (see ImapProtocol)."""
        placeholder = self.protocol.secret_placeholder(quoted(password))
        command = Command("LOGIN", self._tag(), quoted(user), placeholder, loop=self._loop)
        response = await self.execute(command, "LOGIN")
        return await self._after_auth(response)

    async def authenticate(
        self, mechanism: str, responders: Sequence[Responder], *, initial: bytes | None = None
    ) -> Response:
        """AUTHENTICATE MECHANISM; with ``initial`` and SASL-IR the first answer goes on the
        command line (one round trip less), else it answers the first challenge."""
        if initial is not None and self.has("SASL-IR"):
            ir = base64.b64encode(initial).decode("ascii") or "="
            placeholder = self.protocol.secret_placeholder(f"{mechanism} {ir}")
            command = SaslCommand(self._tag(), placeholder, responders, loop=self._loop)
        else:
            first: list[Responder] = [lambda _c: initial] if initial is not None else []
            command = SaslCommand(self._tag(), mechanism, [*first, *responders], loop=self._loop)
        response = await self.execute(command, f"AUTHENTICATE {mechanism}")
        return await self._after_auth(response)

    async def _after_auth(self, response: Response) -> Response:
        if response.result == "OK":
            self.protocol.state = AUTH
            if not self._capabilities_from(response):
                await self.capability()
        return response

    async def select(self, folder: str) -> Response:
        """SELECT; on OK, :attr:`selected` holds UIDVALIDITY and the message count."""
        command = Command("SELECT", self._tag(), quoted(encode_folder(folder)), loop=self._loop)
        response = await self.execute(command, f"SELECT {folder}")
        if response.result == "OK":
            self.protocol.state = SELECTED
            self.selected = select_info(folder, response)
        return response

    async def list_folders(self, pattern: str = "*") -> list[tuple[str, tuple[str, ...]]]:
        """LIST "" PATTERN: (folder name, attributes) pairs."""
        command = Command(
            "LIST", self._tag(), '""', quoted(encode_folder(pattern)), loop=self._loop
        )
        response = self._check(await self.execute(command, "LIST"), "LIST")
        return parse_list(response)

    async def noop(self) -> None:
        self._check(await self.execute(Command("NOOP", self._tag(), loop=self._loop)), "NOOP")

    # -- mailbox commands

    async def uid_search(self, *criteria: str) -> list[int]:
        command = Command("SEARCH", self._tag(), *criteria, prefix="UID", loop=self._loop)
        response = self._check(await self.execute(command, "UID SEARCH"), "UID SEARCH")
        uids: list[int] = []
        for line in response.lines[:-1]:
            if type(line) is bytes:
                uids.extend(int(word) for word in line.split() if word.isdigit())
        return sorted(set(uids))

    async def uid_fetch(self, uids: Sequence[int], items: str) -> list[dict[str, Any]]:
        """UID FETCH; one dict per message: uid, and size / flags / body as asked."""
        if not uids:
            return []
        command = _Fetch(self._tag(), uid_set(uids), items, loop=self._loop)
        response = self._check(await self.execute(command, "UID FETCH"), "UID FETCH")
        return parse_fetch(response)

    async def fetch_mails(self, uids: Sequence[int]) -> list[FetchedMail]:
        """The raw mails, without setting \\Seen (BODY.PEEK)."""
        out: list[FetchedMail] = []
        for item in await self.uid_fetch(uids, "(UID FLAGS BODY.PEEK[])"):
            if "uid" in item and "body" in item:
                out.append(FetchedMail(item["uid"], item["body"], item.get("flags", ())))
        return out

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        items = await self.uid_fetch(uids, "(UID RFC822.SIZE)")
        return {item["uid"]: item.get("size", 0) for item in items if "uid" in item}

    async def uid_store(self, uids: Sequence[int], change: str, flags: str) -> None:
        """UID STORE set +FLAGS.SILENT (flags): silent, so no FETCH per mail comes back."""
        for chunk in chunks(uids, 500):
            command = Command(
                "STORE",
                self._tag(),
                uid_set(chunk),
                f"{change}FLAGS.SILENT",
                f"({flags})",
                prefix="UID",
                untagged_resp_name="FETCH",
                loop=self._loop,
            )
            self._check(await self.execute(command, "UID STORE"), "UID STORE")

    async def claim(
        self, uids: Sequence[int], unchanged_since: int, keyword: str
    ) -> dict[int, tuple[str, ...]]:
        """UID STORE (UNCHANGEDSINCE n) +FLAGS (keyword) (CONDSTORE, RFC 7162): set
        ``keyword`` on the mails not changed since ``n``; returns the UIDs it was set on,
        each with its flags as the server holds them after the store (empty when the
        server did not say). Those a server names in ``[MODIFIED ...]`` were changed
        meanwhile (another runtime claimed them first) and are left alone. Not silent: the
        flags after the store are what tells a claim that came second (see
        ``ImapMailbox.claim``)."""
        claimed: dict[int, tuple[str, ...]] = {}
        for chunk in chunks(uids, 500):
            command = Command(
                "STORE",
                self._tag(),
                uid_set(chunk),
                f"(UNCHANGEDSINCE {unchanged_since})",
                "+FLAGS",
                f"({keyword})",
                prefix="UID",
                untagged_resp_name="FETCH",
                loop=self._loop,
            )
            response = self._check(await self.execute(command, "UID STORE"), "UID STORE")
            modified: set[int] = set()
            if response_code(response) == "MODIFIED":
                text = response_text(response)
                modified = parse_uid_set(text.split("]", 1)[0].split()[-1])
            flags: dict[int, tuple[str, ...]] = {}
            for item in parse_fetch(response):
                if isinstance(item.get("uid"), int) and "flags" in item:
                    flags[item["uid"]] = tuple(item["flags"])
            claimed.update((uid, flags.get(uid, ())) for uid in chunk if uid not in modified)
        return claimed

    async def uid_expunge(self, uids: Sequence[int]) -> None:
        """Expunge exactly these mails (UIDPLUS); else a plain EXPUNGE (all \\Deleted)."""
        if not self.has("UIDPLUS"):
            command = Command("EXPUNGE", self._tag(), loop=self._loop)
            self._check(await self.execute(command, "EXPUNGE"), "EXPUNGE")
            return
        for chunk in chunks(uids, 500):
            command = Command("EXPUNGE", self._tag(), uid_set(chunk), prefix="UID", loop=self._loop)
            self._check(await self.execute(command, "UID EXPUNGE"), "UID EXPUNGE")

    async def uid_move(self, uids: Sequence[int], folder: str) -> Response:
        """UID MOVE (RFC 6851); the caller falls back to COPY+STORE+EXPUNGE without MOVE."""
        response = Response("OK", [])
        for chunk in chunks(uids, 500):
            command = Command(
                "MOVE",
                self._tag(),
                uid_set(chunk),
                quoted(encode_folder(folder)),
                prefix="UID",
                loop=self._loop,
            )
            response = await self.execute(command, f"UID MOVE to {folder}")
            if response.result != "OK":
                return response
        return response

    async def uid_copy(self, uids: Sequence[int], folder: str) -> Response:
        response = Response("OK", [])
        for chunk in chunks(uids, 500):
            command = Command(
                "COPY",
                self._tag(),
                uid_set(chunk),
                quoted(encode_folder(folder)),
                prefix="UID",
                loop=self._loop,
            )
            response = await self.execute(command, f"UID COPY to {folder}")
            if response.result != "OK":
                return response
        return response

    # -- IDLE

    async def idle(self, wait: float, *, interrupt: asyncio.Event | None = None) -> bool:
        """IDLE until the server reports new mail (True), or ``wait`` seconds pass or
        ``interrupt`` is set (False, unless mail came meanwhile).

        Raises StoreClosedException when the connection drops meanwhile, and when the
        server does not answer DONE in time (a half-open connection).
        """
        protocol = self.protocol
        if protocol.new_mail.is_set():
            return True
        if not self.has("IDLE"):
            raise errors.no_idle(f"{self.host}:{self.port}")
        # pushes are read through new_mail; the queue only soaks up what IDLE collects
        command = IdleCommand(self._tag(), asyncio.Queue(), loop=self._loop)
        protocol._idle_event.clear()
        protocol.last_activity = time.monotonic()
        task = asyncio.ensure_future(protocol.execute(command))
        try:
            acknowledged = asyncio.ensure_future(protocol._idle_event.wait())
            try:
                await self._bounded(
                    asyncio.wait({task, acknowledged}, return_when="FIRST_COMPLETED"), "IDLE"
                )
            finally:
                acknowledged.cancel()
            if task.done():
                self._check(self._result(task, "IDLE"), "IDLE")
                return protocol.new_mail.is_set()
            wakers = {asyncio.ensure_future(protocol.new_mail.wait())}
            if interrupt is not None:
                wakers.add(asyncio.ensure_future(interrupt.wait()))
            try:
                await asyncio.wait({task, *wakers}, timeout=wait, return_when="FIRST_COMPLETED")
            finally:
                for waker in wakers:
                    waker.cancel()
            if not task.done():
                protocol.idle_done()
            response = await self._bounded(asyncio.shield(task), "IDLE DONE")
            self._check(response, "IDLE")
            return protocol.new_mail.is_set()
        except _ConnectionClosed:
            raise self._closed_error("IDLE") from None  # its reason is in the message
        finally:
            if not task.done():
                task.cancel()

    def _result(self, task: asyncio.Future[Response], what: str) -> Response:
        try:
            return task.result()
        except _ConnectionClosed:
            raise self._closed_error(what) from None  # its reason is in the message
