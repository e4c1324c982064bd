"""The relay for plain TCP mappings on Linux: bytes move socket -> pipe -> socket in the kernel.

Each direction owns a pipe, the bounded buffer, and streams through it: it reads from its
source while the pipe has room and writes to its destination whenever the pipe holds bytes
and the destination takes them, so a slow destination does not stop the reading until the
pipe is full. The bytes in the pipe are counted against its real capacity (``F_GETPIPE_SZ``,
at most :data:`PIPE_SIZE`) and a read never asks for more than the room left, so no more
than that capacity is ever in flight per direction. When the destination cannot take more,
the pipe fills up and the reading stops until the destination has taken some: that is the
back-pressure. An EOF is passed on (``shutdown(SHUT_WR)``) only once the pipe is empty, so
the destination gets its half-close after everything read has been written.

The directions are driven by the event loop's reader/writer callbacks (no task per chunk).
A callback stays registered while it is useful (the reader while the pipe has room, the
writer while bytes wait for a full destination), so a flowing stream costs no registration
per chunk: one wake-up reads and then writes at once. Bytes moved either way (read or
written) count as activity for the idle timeout.
Measured on loopback, this costs less than half the CPU time per byte of the stream relay,
which is what lets the connector keep up with a direct connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket

from flowrt.connector.relay import Relay, describe_error

__all__ = ["PIPE_SIZE", "SpliceRelay"]

PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
#: What a pipe holds at the least (one page), should its size be unknown.
_MIN_PIPE_SIZE = 4096
#: NONBLOCK: never wait on the pipe (the sockets are non-blocking already); MOVE: a hint only.
#: No SPLICE_F_MORE: it would hold back the end of an answer (a partial segment) until more
#: comes, a delay per round trip for chatty mail protocols; the kernel already marks all but
#: the last page of one splice as "more".
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class SpliceRelay(Relay):
    def __init__(
        self, client: socket.socket, backend: socket.socket, *, idle_timeout: float
    ) -> None:
        self._client = client
        self._backend = backend
        self._idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed_by = ""

    async def run(self, first_bytes: bytes = b"") -> None:
        up: _Direction | None = None
        down: _Direction | None = None
        try:
            if first_bytes:
                await self._loop.sock_sendall(self._backend, first_bytes)
                self.bytes_up += len(first_bytes)
            up = _Direction(self, self._client, self._backend, "client")
            down = _Direction(self, self._backend, self._client, "backend")
            pending = {up.done, down.done}
            while pending:
                remaining = self.last_activity + self._idle_timeout - self._loop.time()
                done, pending = await asyncio.wait(
                    pending, timeout=max(remaining, 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                for future in done:
                    error = future.result()
                    if error is not None:
                        self._set_closed_by(f"error: {describe_error(error)}")
                        return
                if self._loop.time() - self.last_activity >= self._idle_timeout:
                    self._set_closed_by("idle_timeout")
                    return
        except asyncio.CancelledError:
            self._set_closed_by("shutdown")
            raise
        except OSError as exc:  # from sending first_bytes
            self._set_closed_by(f"error: {describe_error(exc)}")
        finally:
            # The callbacks must go before the sockets: a closed fd number can be reused.
            for direction in (up, down):
                if direction is not None:
                    direction.close()
            self._client.close()
            self._backend.close()

    def eof(self, side: str) -> None:
        self._set_closed_by(side)

    def moved(self, side: str, count: int) -> None:
        if side == "client":
            self.bytes_up += count
        else:
            self.bytes_down += count
        self.last_activity = self._loop.time()


class _Direction:
    """One direction: ``src`` -> pipe -> ``dst``. ``done`` gets None at EOF, or the error.

    The reader callback is registered while the pipe has room (and no EOF was read), the
    writer callback while bytes wait for a destination that was full. A read is followed by a
    write at once when the destination is not known to be full, so a chunk normally goes
    through in one wake-up; a short write means the destination is full, and the writer
    callback takes over until it drains.
    """

    def __init__(
        self, relay: SpliceRelay, src: socket.socket, dst: socket.socket, side: str
    ) -> None:
        self._relay = relay
        self._side = side
        self._loop = asyncio.get_running_loop()
        self._src = src.fileno()
        self._dst = dst.fileno()
        self._dst_sock = dst
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a smaller default pipe only costs speed
            fcntl.fcntl(self._pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        try:
            capacity = fcntl.fcntl(self._pipe_w, _F_GETPIPE_SZ)
        except OSError:
            capacity = _MIN_PIPE_SIZE
        #: The most bytes this direction holds: what a read may bring in while it is empty.
        self.capacity = min(capacity, PIPE_SIZE)
        #: Bytes read from ``src`` and not yet written to ``dst`` (never above ``capacity``).
        self.in_pipe = 0
        self._eof = False  # the source has ended; passed on once the pipe is empty
        self._reading = False
        self._writing = False
        self.done: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._read_on()

    def _read_on(self) -> None:
        if not self._reading:
            self._loop.add_reader(self._src, self._on_readable)
            self._reading = True

    def _read_off(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._src)
            self._reading = False

    def _write_on(self) -> None:
        if not self._writing:
            self._loop.add_writer(self._dst, self._on_writable)
            self._writing = True

    def _write_off(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._dst)
            self._writing = False

    def _on_readable(self) -> None:
        room = self.capacity - self.in_pipe
        try:
            count = os.splice(self._src, self._pipe_w, room, flags=_FLAGS)
        except BlockingIOError:
            if self.in_pipe:
                # A spurious wake-up, or a pipe whose slots are all taken by partial pages
                # (fewer bytes than its capacity): the writer turns reading back on.
                self._read_off()
            return
        except OSError as exc:
            self._finish(exc)
            return
        if count == 0:
            self._eof = True
            self._read_off()
            if not self.in_pipe:
                self._end()
            return
        self.in_pipe += count
        self._relay.moved(self._side, count)
        # While the writer waits, the destination is full: the bytes wait in the pipe.
        if (self._writing or self._write()) and self.in_pipe == self.capacity:
            self._read_off()  # the pipe is full: the writer turns reading back on

    def _on_writable(self) -> None:
        if self._write() and not self._eof and self.in_pipe < self.capacity:
            self._read_on()  # there is room in the pipe (again)

    def _write(self) -> bool:
        """Write what the pipe holds, as far as the destination takes it; False once done."""
        try:
            count = os.splice(self._pipe_r, self._dst, self.in_pipe, flags=_FLAGS)
        except BlockingIOError:
            self._write_on()  # the destination is full: wait until it drains
            return True
        except OSError as exc:
            self._finish(exc)
            return False
        self.in_pipe -= count
        self._relay.last_activity = self._loop.time()
        if self.in_pipe:
            self._write_on()  # a short write: the destination is full
            return True
        self._write_off()
        if self._eof:
            self._end()
            return False
        return True

    def _end(self) -> None:
        """Pass the source's EOF on: everything read has been written."""
        with contextlib.suppress(OSError):  # the peer may be gone already
            self._dst_sock.shutdown(socket.SHUT_WR)
        self._relay.eof(self._side)
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        self._read_off()
        self._write_off()
        if not self.done.done():
            self.done.set_result(error)

    def close(self) -> None:
        self._finish(None)
        os.close(self._pipe_r)
        os.close(self._pipe_w)
