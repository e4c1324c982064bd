"""Copying bytes both ways between the client and the back end, until both are done.

Two implementations with the same behaviour: :class:`SpliceRelay` (``_splice.py``) moves the
bytes of a plain ``tcp`` mapping inside the kernel with Linux ``splice(2)``, never copying
them into Python, which more than halves the connector's CPU time per byte; the
:class:`StreamRelay` here serves ``tcp-tls`` mappings (TLS needs a transport) and systems
without ``splice``. :func:`make_relay` picks one. For both:

* Back-pressure: what a direction has read and not yet written is bounded (streams: at most
  :data:`~flowrt.connector.dial.READ_LIMIT` bytes, then ``await drain()``; splice: a pipe
  of at most 1 MiB, read into while it has room and written from at the same time), so a
  slow reader on one side stops the reading on the other, and every buffer is bounded.
* Half-close: when one side ends its sending (EOF), the other side gets an EOF too
  (``write_eof``) and the opposite direction goes on; the connection closes when both
  directions have ended. A TLS back end cannot take a half-close (TLS has no such thing),
  so after the client's EOF it gets :data:`HALF_CLOSE_LINGER` seconds to finish its answer.
* Idle bound: when no byte has moved either way for ``idle_timeout``, both sides are closed.
  One shared timestamp is updated per chunk (splice: per chunk read or written), and one
  waiter checks it, instead of a timer per read, which keeps the per-chunk cost to a clock
  read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from flowrt.connector.dial import READ_LIMIT, Backend

__all__ = [
    "HALF_CLOSE_LINGER",
    "USE_SPLICE",
    "Relay",
    "StreamRelay",
    "describe_error",
    "make_relay",
]

#: Whether plain TCP relays use splice(2); tests switch it off to cover the stream relay.
USE_SPLICE = hasattr(os, "splice")

#: How long a back end that cannot be half-closed (TLS) may still send after the client's EOF.
HALF_CLOSE_LINGER = 10.0
#: How long closing may wait for unsent data to leave before the sockets are aborted.
CLOSE_TIMEOUT = 5.0


class Relay:
    """One relayed connection. ``bytes_up`` is client -> back end, ``bytes_down`` the other
    way; ``closed_by`` says what ended it: ``client``, ``backend`` (whoever sent EOF first),
    ``idle_timeout``, ``error: ...`` or ``shutdown``."""

    bytes_up: int
    bytes_down: int
    closed_by: str

    async def run(self, first_bytes: bytes = b"") -> None:
        """Relay (``first_bytes`` go to the back end first) until the connection ends."""
        raise NotImplementedError

    def _set_closed_by(self, reason: str) -> None:
        if not self.closed_by:
            self.closed_by = reason


async def make_relay(client: socket.socket, backend: Backend, *, idle_timeout: float) -> Relay:
    """The relay for a client socket and a dialled back end (see the module docstring)."""
    if backend.sock is not None and USE_SPLICE:
        # Imported here: _splice builds on this module, and needs Linux (fcntl, splice).
        from flowrt.connector._splice import SpliceRelay

        return SpliceRelay(client, backend.sock, idle_timeout=idle_timeout)
    client_streams = await asyncio.open_connection(sock=client, limit=READ_LIMIT)
    backend_streams = backend.streams
    if backend_streams is None:
        assert backend.sock is not None
        backend_streams = await asyncio.open_connection(sock=backend.sock, limit=READ_LIMIT)
    return StreamRelay(client_streams, backend_streams, idle_timeout=idle_timeout)


class StreamRelay(Relay):
    """The relay over asyncio streams (see the module docstring)."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        backend: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        *,
        idle_timeout: float,
        linger: float | None = None,
    ) -> None:
        self._client_reader, self._client_writer = client
        self._backend_reader, self._backend_writer = backend
        self._idle_timeout = idle_timeout
        self._linger = HALF_CLOSE_LINGER if linger is None else linger
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._linger_deadline: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed_by = ""

    async def run(self, first_bytes: bytes = b"") -> None:
        """Relay until both directions end, the connection idles out, or an error."""
        up = asyncio.create_task(self._pump_up(first_bytes))
        down = asyncio.create_task(self._pump_down())
        pending: set[asyncio.Task[None]] = {up, down}
        abort = False  # after an error or at shutdown nothing is left worth delivering
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=self._wait_time(), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        self._set_closed_by(f"error: {describe_error(exc)}")
                        abort = True
                        return
                now = self._loop.time()
                if now - self._last_activity >= self._idle_timeout:
                    self._set_closed_by("idle_timeout")
                    return
                if self._linger_deadline is not None and now >= self._linger_deadline:
                    return
        except asyncio.CancelledError:
            self._set_closed_by("shutdown")
            abort = True
            raise
        finally:
            for task in (up, down):
                task.cancel()
            # Collect the pumps so that none is left pending when the loop ends.
            await asyncio.gather(up, down, return_exceptions=True)
            await self._close(abort=abort)

    def _wait_time(self) -> float:
        remaining = self._last_activity + self._idle_timeout - self._loop.time()
        if self._linger_deadline is not None:
            remaining = min(remaining, self._linger_deadline - self._loop.time())
        return max(remaining, 0.0)

    async def _pump_up(self, first_bytes: bytes) -> None:
        writer = self._backend_writer
        if first_bytes:
            # Bytes the client pipelined behind its CONNECT request.
            writer.write(first_bytes)
            self.bytes_up += len(first_bytes)
            await writer.drain()
        reader = self._client_reader
        while data := await reader.read(READ_LIMIT):
            writer.write(data)
            self.bytes_up += len(data)
            self._last_activity = self._loop.time()
            await writer.drain()
        self._set_closed_by("client")
        if writer.can_write_eof():
            writer.write_eof()
        else:
            self._linger_deadline = self._loop.time() + self._linger

    async def _pump_down(self) -> None:
        reader, writer = self._backend_reader, self._client_writer
        while data := await reader.read(READ_LIMIT):
            writer.write(data)
            self.bytes_down += len(data)
            self._last_activity = self._loop.time()
            await writer.drain()
        self._set_closed_by("backend")
        # The client side is always plain TCP, which can be half-closed.
        if writer.can_write_eof():
            writer.write_eof()

    async def _close(self, *, abort: bool) -> None:
        writers = (self._client_writer, self._backend_writer)
        if abort:
            for writer in writers:
                writer.transport.abort()
            return
        for writer in writers:
            writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                for writer in writers:
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except TimeoutError:
            pass
        finally:
            # A peer that does not read must not keep a socket (and its buffer) forever.
            for writer in writers:
                if writer.transport.get_write_buffer_size():
                    writer.transport.abort()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
