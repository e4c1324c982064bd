"""The connector's SOCKS5 server: authenticate, decide, dial, relay, and log each decision.

Decisions, in order, with the reply a client gets (each is one log line with ``outcome``):

==========================================  ===========================================
the client offers no username/password       method 0xFF "no acceptable methods", close
  method (0x02; there is no "no auth")
the password is not this location's token    RFC 1929 status 0x01 (failure), close;
                                               logged ``bad_token``, or ``unknown_location``
                                               when the user is not this location ID either
a command other than CONNECT                 0x07 Command not supported
the user (location ID) is not this           0x03 Network unreachable (``unknown_location``):
  connector's, but the token is right          the runtime asked the wrong connector
the virtual host:port is not mapped          0x02 Connection not allowed by ruleset
``max_connections`` relays already run       0x01 General SOCKS server failure
the back end refuses / is unreachable        0x05 Connection refused / 0x04 Host unreachable
the tcp-tls back end is not trusted          0x01 General SOCKS server failure (see dial.py)
otherwise                                    0x00, then bytes are relayed
==========================================  ===========================================

The handshake (greeting to request) must finish within ``handshake_timeout``. Connections
still in their handshake are limited to ``max_connections`` too; a client beyond that is
closed at once without a reply, which bounds what a flood of idle sockets can hold.

The server works on plain sockets (``sock_accept``, ``sock_recv``): the handshake is a few
small messages, and a plain TCP relay can then hand both sockets to ``splice(2)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from structlog.typing import FilteringBoundLogger

from flowrt.connector._log import make_logger
from flowrt.connector.config import ConnectorConfig, Mapping, format_address
from flowrt.connector.dial import Backend, DialError, dial
from flowrt.connector.relay import make_relay
from flowrt.connector.socks5 import (
    METHOD_NONE_ACCEPTABLE,
    METHOD_USERNAME_PASSWORD,
    Command,
    Reply,
    Request,
    Socks5ProtocolError,
    auth_reply,
    method_reply,
    parse_auth,
    parse_greeting,
    parse_request,
    reply,
)
from flowrt.errors import ConnectorError

__all__ = ["ConnectorServer", "serve"]

T = TypeVar("T")
_RECV_SIZE = 4096
_MAX_HANDSHAKE_BYTES = 1024  # the longest handshake message is 513 bytes (RFC 1929)
_BACKLOG = 128
_CLOSE_TIMEOUT = 1.0  # how long a rejected client may take to read its answer


class _Rejected(Exception):
    """Ends a connection before relaying: what to send, and the log line's outcome."""

    def __init__(self, outcome: str, reason: str, answer: bytes | None = None) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.answer = answer


class ConnectorServer:
    """Serves one location: ``await start()``, then ``await close()`` (or ``async with``)."""

    def __init__(self, config: ConnectorConfig, *, logger: FilteringBoundLogger | None = None):
        self.config = config
        self.log = logger or make_logger()
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshaking = 0
        self._relaying = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self._listeners = await asyncio.get_running_loop().run_in_executor(
            None, _listen, config.listen_host, config.listen_port
        )
        for sock in self._listeners:
            self._accepting.append(asyncio.create_task(self._accept_loop(sock)))
        self.log.info(
            "listening",
            address=", ".join(self.addresses_text()),
            location=config.location_id,
            mappings=len(config.mappings),
            token_source=config.token.source,
            max_connections=config.max_connections,
            idle_timeout=config.idle_timeout,
        )

    def reload(self, load: Callable[[], ConnectorConfig]) -> bool:
        """Take a new configuration for the connections to come; relays in progress keep
        theirs. A configuration that does not load is not taken: the old one stays, and the
        log says why. The listening address cannot change without a restart."""
        old = self.config
        try:
            new = load()
        except ConnectorError as exc:
            self.log.error(
                "reload failed",
                error=exc.message,
                hint=exc.hint,
                kept="the previous configuration",
            )
            return False
        if (new.listen_host, new.listen_port) != (old.listen_host, old.listen_port):
            self.log.warning(
                "listen change needs a restart",
                listen=old.listen,
                configured=new.listen,
            )
            new = dataclasses.replace(new, listen_host=old.listen_host, listen_port=old.listen_port)
        self.config = new
        self.log.info(
            "reloaded",
            location=new.location_id,
            mappings=len(new.mappings),
            token_source=new.token.source,
            max_connections=new.max_connections,
            idle_timeout=new.idle_timeout,
        )
        return True

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the server listens (the real ports when the config says port 0)."""
        return [
            (str(sock.getsockname()[0]), int(sock.getsockname()[1])) for sock in self._listeners
        ]

    def addresses_text(self) -> list[str]:
        return [format_address(host, port) for host, port in self.addresses]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def active_relays(self) -> int:
        return self._relaying

    async def close(self) -> None:
        """Stop accepting, end every connection (logged ``shutdown``), and return."""
        if not self._listeners:
            return
        tasks = [*self._accepting, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        self._accepting = []
        self.log.info("stopped", location=self.config.location_id)

    async def __aenter__(self) -> ConnectorServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                # Out of file descriptors, or a client gone before accept: pause, go on.
                self.log.warning("accept_failed", error=exc.strerror or repr(exc))
                await asyncio.sleep(0.1)
                continue
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._connection(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- one connection --------------------------------------------------------------------

    async def _connection(self, conn: socket.socket) -> None:
        fields: dict[str, Any] = {"client": _peer(conn)}
        try:
            await self._serve(conn, fields)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not stop the server or print a traceback
            self.log.error("internal_error", **fields, error=repr(exc))
        finally:
            conn.close()  # a no-op when the relay has closed it

    async def _serve(self, conn: socket.socket, fields: dict[str, Any]) -> None:
        config = self.config
        if self._handshaking >= config.max_connections:
            self.log.warning(
                "rejected",
                **fields,
                outcome="too_many_handshakes",
                reason=f"{self._handshaking} clients are in their handshake already",
            )
            return
        self._handshaking += 1
        buf = bytearray()
        try:
            try:
                async with asyncio.timeout(config.handshake_timeout):
                    request = await self._handshake(conn, buf, fields)
            finally:
                self._handshaking -= 1
            mapping = self._decide(request, fields)
        except _Rejected as rejected:
            await self._reject(conn, rejected, fields)
            return
        except TimeoutError:
            timeout = config.handshake_timeout
            reason = f"the SOCKS handshake did not finish within {timeout:g}s"
            await self._reject(conn, _Rejected("handshake_timeout", reason), fields)
            return

        self._relaying += 1  # reserved before dialing, so the limit holds while dialing
        try:
            try:
                backend = await dial(
                    mapping, tls_context=config.tls_context, timeout=config.connect_timeout
                )
            except DialError as exc:
                await self._reject(
                    conn, _Rejected(exc.outcome, exc.reason, reply(exc.reply)), fields
                )
                return
            await self._relay(conn, backend, bytes(buf), fields)
        finally:
            self._relaying -= 1

    async def _relay(
        self, conn: socket.socket, backend: Backend, first_bytes: bytes, fields: dict[str, Any]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(conn, reply(Reply.SUCCEEDED))
            relay = await make_relay(conn, backend, idle_timeout=self.config.idle_timeout)
        except BaseException:
            backend.abort()
            raise
        self.log.info("connected", **fields, outcome="connected", reply=0)
        started = time.monotonic()
        try:
            await relay.run(first_bytes)
        finally:
            self.log.info(
                "closed",
                **fields,
                closed_by=relay.closed_by or "shutdown",
                bytes_up=relay.bytes_up,
                bytes_down=relay.bytes_down,
                duration=round(time.monotonic() - started, 3),
            )

    async def _handshake(
        self, conn: socket.socket, buf: bytearray, fields: dict[str, Any]
    ) -> Request:
        loop = asyncio.get_running_loop()
        greeting = await _read(conn, buf, parse_greeting)
        if METHOD_USERNAME_PASSWORD not in greeting.methods:
            offered = ", ".join(f"0x{m:02x}" for m in sorted(greeting.methods))
            raise _Rejected(
                "no_acceptable_method",
                f"the client offers methods {offered}; this connector requires "
                "username/password (0x02): user = location ID, password = access token",
                method_reply(METHOD_NONE_ACCEPTABLE),
            )
        await loop.sock_sendall(conn, method_reply(METHOD_USERNAME_PASSWORD))
        credentials = await _read(conn, buf, parse_auth)
        fields["location"] = credentials.username
        if not self.config.token.matches(credentials.password):
            if credentials.username != self.config.location_id:
                raise _Rejected(
                    "unknown_location",
                    f"location {credentials.username!r} is not served here (this connector "
                    f"serves {self.config.location_id!r}), and the token does not match",
                    auth_reply(False),
                )
            raise _Rejected(
                "bad_token", "the access token does not match this location", auth_reply(False)
            )
        await loop.sock_sendall(conn, auth_reply(True))
        request = await _read(conn, buf, parse_request)
        fields["virtual"] = format_address(request.host, request.port)
        return request

    def _decide(self, request: Request, fields: dict[str, Any]) -> Mapping:
        config = self.config
        if request.command != Command.CONNECT:
            try:
                name = Command(request.command).name
            except ValueError:
                name = f"0x{request.command:02x}"
            raise _Rejected(
                "command_not_supported",
                f"command {name}: the connector only relays CONNECT",
                reply(Reply.COMMAND_NOT_SUPPORTED),
            )
        if fields["location"] != config.location_id:
            raise _Rejected(
                "unknown_location",
                f"location {fields['location']!r} is not served here "
                f"(this connector serves {config.location_id!r})",
                reply(Reply.NETWORK_UNREACHABLE),
            )
        mapping = config.find(request.host, request.port)
        if mapping is None:
            raise _Rejected(
                "not_allowed",
                f"no mapping for {fields['virtual']} in location {config.location_id!r}",
                reply(Reply.NOT_ALLOWED),
            )
        fields["mapping"] = mapping.describe()
        if self._relaying >= config.max_connections:
            raise _Rejected(
                "connection_limit",
                f"max_connections ({config.max_connections}) connections are open",
                reply(Reply.GENERAL_FAILURE),
            )
        return mapping

    async def _reject(
        self, conn: socket.socket, rejected: _Rejected, fields: dict[str, Any]
    ) -> None:
        code = _reply_code(rejected.answer)
        extra: dict[str, Any] = {}
        if code is not None:
            extra = {"reply": code, "reply_text": Reply(code).text}
        level = self.log.info if rejected.outcome in _QUIET_OUTCOMES else self.log.warning
        level("rejected", **fields, outcome=rejected.outcome, reason=rejected.reason, **extra)
        await _close_gracefully(conn, rejected.answer)


# Outcomes that happen in normal operation (a port probe) and are no cause for a warning.
_QUIET_OUTCOMES = frozenset({"client_closed"})


async def _close_gracefully(conn: socket.socket, answer: bytes | None) -> None:
    """Send the answer, then end the connection so that the client can read it.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the answer on its way; so the write side is shut first and the input drained (bounded).
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            if answer is not None:
                await loop.sock_sendall(conn, answer)
            conn.shutdown(socket.SHUT_WR)
            while await loop.sock_recv(conn, _RECV_SIZE):
                pass
    except (TimeoutError, OSError):
        pass
    finally:
        conn.close()


def _reply_code(answer: bytes | None) -> int | None:
    """The reply code in a CONNECT reply (``05 CODE 00 ...``), for the log line."""
    if answer is not None and len(answer) >= 10 and answer[0] == 0x05:
        return answer[1]
    return None


async def _read(
    conn: socket.socket,
    buf: bytearray,
    parse: Callable[[bytearray], tuple[T, int] | None],
) -> T:
    """The next handshake message: parse what is buffered, read more while it is incomplete."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            parsed = parse(buf)
        except Socks5ProtocolError as exc:
            raise _Rejected("protocol_error", str(exc), exc.reply) from None
        if parsed is not None:
            message, used = parsed
            del buf[:used]
            return message
        if len(buf) > _MAX_HANDSHAKE_BYTES:  # cannot happen with the parsers' limits
            raise _Rejected("protocol_error", "handshake message too long")
        try:
            chunk = await loop.sock_recv(conn, _RECV_SIZE)
        except OSError as exc:
            raise _Rejected("client_closed", f"the client went away: {exc.strerror}") from None
        if not chunk:
            raise _Rejected("client_closed", "the client closed during the handshake")
        buf += chunk


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` stands for (blocking: run in a thread)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConnectorError(
            f"cannot listen on {format_address(host, port)}: {exc.strerror}"
        ) from None
    families = {info[0] for info in infos}
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and socket.AF_INET in families:
                # Both families listed (e.g. "localhost"): each socket takes its own family.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConnectorError(
            f"cannot listen on {format_address(host, port)}: {exc.strerror or exc}",
            hint="another process may use the port; change `listen` in the configuration "
            "or stop the other process",
        ) from None
    return sockets


def _peer(conn: socket.socket) -> str:
    try:
        peer = conn.getpeername()
    except OSError:
        return "?"
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), int(peer[1]))
    return str(peer)


async def serve(
    config: ConnectorConfig,
    *,
    logger: FilteringBoundLogger | None = None,
    reload: Callable[[], ConnectorConfig] | None = None,
) -> None:
    """Run the connector until SIGTERM or SIGINT (Ctrl-C), then shut down cleanly.

    The signals are handled by the event loop, so a stop is an orderly ``close()`` (every open
    connection logged as ``shutdown``), never a ``KeyboardInterrupt`` traceback. On SIGHUP,
    ``reload`` reads the configuration again (see :meth:`ConnectorServer.reload`).
    """
    server = ConnectorServer(config, logger=logger)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(name: str) -> None:
        received.append(name)
        stop.set()

    def on_hangup() -> None:
        if reload is None:
            server.log.info("reload not possible", signal="SIGHUP", reason="no config file")
            return
        server.reload(reload)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await stop.wait()
        server.log.info(
            "stopping",
            signal=received[0] if received else None,
            open_connections=server.active_relays,
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.close()
