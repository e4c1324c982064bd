"""Scripted, misbehaving SMTP servers (aiosmtpd) for tests.

Each ``ScriptedSMTPServer`` runs its own event loop in a daemon thread, so the same object
works from sync tests and from pytest-asyncio tests (the test's loop is just a TCP client).
What the server does is set by a ``Script``:

* ``greeting``: e.g. ``"421 4.3.2 Service not available"``: sent instead of the 220
  banner, then the connection is closed; ``drop_on_connect`` closes without any greeting;
* ``rcpt_replies``: per-recipient replies (``{"full@example.com": "452 4.2.2 Mailbox full",
  "nobody@example.com": "550 5.1.1 No such user"}``); other recipients get 250;
* ``mail_reply`` / ``data_reply``: a fixed reply to MAIL FROM / after the data;
* ``drop_during_data``: receive the whole message, record it, then drop the connection
  without replying (the client cannot know whether the message was taken);
* ``delays``: seconds to sleep before replying, by phase: ``"greeting"``, ``"EHLO"``,
  ``"MAIL"``, ``"RCPT"``, ``"DATA"`` (the reply after the data);
* ``tls``: a ``ServerCert`` to offer STARTTLS with (``require_starttls`` to insist), or
  ``implicit_tls=True`` for SMTPS;
* ``pipelining``: offer PIPELINING (RFC 2920) in the EHLO reply; aiosmtpd reads commands
  in order, so a pipelined group is answered reply by reply. ``waiting_at_mail`` records,
  per MAIL FROM, the client's bytes already there behind it (a moment later): the rest of
  the group when the client pipelines, nothing when it waits for each reply;
* ``chunking``: offer CHUNKING (RFC 3030) too: ``BDAT n [LAST]`` chunks, counted, read
  whole whatever the replies before them were (a refused sender or no recipient: 503/554
  after the chunk, as Postfix does); ``data_reply``, ``drop_during_data`` and the
  ``"DATA"`` delay apply to the last chunk; ``bdat_commands`` records each BDAT line;
* ``credentials``: ``{user: password}`` enables AUTH PLAIN, LOGIN and CRAM-MD5
  (``auth_required`` to insist; ``auth_require_tls`` defaults to "only if TLS is set").

Everything received is recorded in ``server.received`` (envelope, raw bytes, auth user,
TLS state, whether the connection was dropped).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .ca import ServerCert

__all__ = ["ReceivedMessage", "Script", "ScriptedSMTPServer", "cram_md5_response"]


@dataclass(frozen=True)
class Script:
    greeting: str | None = None
    drop_on_connect: bool = False
    rcpt_replies: Mapping[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str | None = None
    drop_during_data: bool = False
    delays: Mapping[str, float] = field(default_factory=dict)
    # recipient -> hold its RCPT reply until this many messages arrived (at most 8 s)
    rcpt_hold: Mapping[str, int] = field(default_factory=dict)
    tls: ServerCert | None = None
    implicit_tls: bool = False
    require_starttls: bool = False
    credentials: Mapping[str, str] | None = None
    auth_required: bool = False
    auth_require_tls: bool | None = None
    pipelining: bool = False
    chunking: bool = False
    hostname: str = "scripted.test.example"
    data_size_limit: int = 64 * 1024 * 1024
    timeout: float = 60.0


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: Any
    helo: str | None
    auth_user: str | None
    tls: bool
    dropped: bool  # the connection was dropped instead of replying to the data


class _Handler:
    def __init__(self, owner: ScriptedSMTPServer) -> None:
        self.owner = owner
        self.script = owner.script

    async def _delay(self, phase: str) -> None:
        seconds = self.script.delays.get(phase, 0)
        if seconds:
            await asyncio.sleep(seconds)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        await self._delay("EHLO")
        session.host_name = hostname
        if self.script.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        if self.script.chunking:
            responses.insert(len(responses) - 1, "250-CHUNKING")
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        await self._delay("EHLO")
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        await self._delay("MAIL")
        if self.script.pipelining:
            await asyncio.sleep(0.02)
            self.owner.waiting_at_mail.append(bytes(server._reader._buffer))  # type: ignore[attr-defined]
        if self.script.mail_reply:
            return self.script.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        await self._delay("RCPT")
        hold = self.script.rcpt_hold.get(address)
        if hold:
            for _ in range(400):
                if len(self.owner.received) >= hold:
                    break
                await asyncio.sleep(0.02)
            self.owner.held_saw.append(len(self.owner.received))
        reply = self.script.rcpt_replies.get(address) or self.script.rcpt_replies.get(
            address.lower()
        )
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        auth = session.auth_data
        auth_user = auth.login.decode(errors="replace") if isinstance(auth, LoginPassword) else None
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(data),
            peer=session.peer,
            helo=session.host_name,
            auth_user=auth_user,
            tls=tls,
            dropped=self.script.drop_during_data,
        )
        self.owner._record(message)
        if self.script.drop_during_data:
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # no reply at all; connection_lost cancels this handler
            await asyncio.sleep(3600)
        self.owner.in_data += 1
        self.owner.most_in_data = max(self.owner.most_in_data, self.owner.in_data)
        try:
            await self._delay("DATA")
        finally:
            self.owner.in_data -= 1
        return self.script.data_reply or "250 2.0.0 OK queued"

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH CRAM-MD5 (RFC 2195), checked against ``Script.credentials``."""
        challenge = f"<{uuid.uuid4().hex}.{int(time.time())}@{self.script.hostname}>".encode()
        response = await server.challenge_auth(challenge)
        if not isinstance(response, bytes):
            return AuthResult(success=False, handled=True)
        user, _, digest = response.decode(errors="replace").rpartition(" ")
        password = (self.script.credentials or {}).get(user)
        expected = hmac.new((password or "").encode(), challenge, hashlib.md5).hexdigest()
        if password is None or not hmac.compare_digest(expected, digest.lower()):
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))


class _ScriptedSMTP(SMTP):
    def __init__(self, owner: ScriptedSMTPServer, handler: _Handler, **kwargs: Any) -> None:
        self.owner = owner
        self._chunks: list[bytes] = []  # BDAT chunks of the transaction so far
        super().__init__(handler, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the STARTTLS re-entry
            self.owner._connection_made(transport)
        super().connection_made(transport)

    async def smtp_BDAT(self, arg: str) -> None:
        """RFC 3030: the chunk is read whole (it is counted) before any reply."""
        if not self.owner.script.chunking:
            await self.push("502 5.5.1 Error: command not implemented")
            return
        words = arg.split()
        if not words or not words[0].isdigit() or words[1:] not in ([], ["LAST"]):
            await self.push("501 5.5.4 Syntax: BDAT count [LAST]")
            return
        self.owner.bdat_commands.append(f"BDAT {arg}")
        chunk = await self._reader.readexactly(int(words[0]))
        self._chunks.append(chunk)
        envelope = self.envelope
        if envelope is None or not envelope.mail_from:
            self._chunks = []
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not envelope.rcpt_tos:
            self._chunks = []
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if not words[1:]:
            await self.push(f"250 2.0.0 {len(chunk)} bytes received")
            return
        envelope.original_content = envelope.content = b"".join(self._chunks)
        self._chunks = []
        status = await self._call_handler_hook("DATA")
        await self.push(status)
        self._set_post_data_state()

    async def _handle_client(self) -> None:
        script = self.owner.script
        if script.drop_on_connect:
            if self.transport is not None:
                self.transport.close()
            return
        delay = script.delays.get("greeting", 0)
        if delay:
            await asyncio.sleep(delay)
        if script.greeting:
            await self.push(script.greeting)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()


class ScriptedSMTPServer:
    """An aiosmtpd server on 127.0.0.1 behaving as ``script`` says, in its own thread."""

    host = "127.0.0.1"

    def __init__(self, script: Script | None = None, **script_fields: Any) -> None:
        if script is not None and script_fields:
            raise TypeError("pass either a Script or its fields, not both")
        self.script = script or Script(**script_fields)
        self.port = 0
        self.received: list[ReceivedMessage] = []
        self.connections = 0
        self.held_saw: list[int] = []  # messages arrived when a held RCPT was answered
        self.waiting_at_mail: list[bytes] = []  # see Script.pipelining
        self.bdat_commands: list[str] = []  # see Script.chunking
        self.in_data = 0  # transactions between their data and its reply
        self.most_in_data = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tls_context: ssl.SSLContext | None = (
            self.script.tls.server_context() if self.script.tls else None
        )
        if self.script.implicit_tls and self._tls_context is None:
            raise ValueError("implicit_tls needs a certificate (tls=...)")

    # -- recording (called on the server thread) ------------------------------------------

    def _record(self, message: ReceivedMessage) -> None:
        with self._cond:
            self.received.append(message)
            self._cond.notify_all()

    def _connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self._cond:
            self.connections += 1
            self._transports.add(transport)

    # -- lifecycle ------------------------------------------------------------------------

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        credentials = self.script.credentials or {}
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode(errors="replace")
        ok = credentials.get(user) == data.password.decode(errors="replace")
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def _factory(self) -> SMTP:
        script = self.script
        kwargs: dict[str, Any] = {
            "hostname": script.hostname,
            "data_size_limit": script.data_size_limit,
            "timeout": script.timeout,
            "loop": self._loop,
            "enable_SMTPUTF8": True,
        }
        if self._tls_context is not None and not script.implicit_tls:
            kwargs["tls_context"] = self._tls_context
            kwargs["require_starttls"] = script.require_starttls
        exclude = []
        if script.credentials is not None:
            kwargs["authenticator"] = self._authenticator
            kwargs["auth_required"] = script.auth_required
            require_tls = script.auth_require_tls
            if require_tls is None:
                require_tls = self._tls_context is not None and not script.implicit_tls
            kwargs["auth_require_tls"] = require_tls
        else:
            exclude = ["PLAIN", "LOGIN", "CRAM-MD5"]
        kwargs["auth_exclude_mechanism"] = exclude
        return _ScriptedSMTP(self, _Handler(self), **kwargs)

    def start(self) -> ScriptedSMTPServer:
        if self._thread is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                ssl_ctx = self._tls_context if self.script.implicit_tls else None
                server = loop.run_until_complete(
                    loop.create_server(self._factory, self.host, 0, ssl=ssl_ctx)
                )
                self._server = server
                self.port = int(server.sockets[0].getsockname()[1])
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    pending = asyncio.all_tasks(loop)
                    for task in pending:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="scripted-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted SMTP server did not start within 10s")
        if errors:
            self._thread = None
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self._transports):
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
            loop.call_later(0.05, loop.stop)

        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(shutdown)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None

    close = stop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> ScriptedSMTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ScriptedSMTPServer port={self.port} received={len(self.received)}>"

    # -- assertions -----------------------------------------------------------------------

    def wait_for_messages(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait (bounded) until at least ``count`` messages were received."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout=timeout):
                raise TimeoutError(
                    f"scripted SMTP server got {len(self.received)} of {count} messages "
                    f"after {timeout}s"
                )
            return list(self.received)

    async def wait_for_messages_async(
        self, count: int = 1, timeout: float = 10.0
    ) -> list[ReceivedMessage]:
        return await asyncio.to_thread(self.wait_for_messages, count, timeout)


def cram_md5_response(user: str, password: str, challenge_b64: bytes | str) -> bytes:
    """The client side of CRAM-MD5, for tests that talk to the servers by hand."""
    challenge = base64.b64decode(challenge_b64)
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    return base64.b64encode(f"{user} {digest}".encode())
