"""The splice(2) relay on its own, over loopback TCP pairs: streaming with bounded buffering.

A paused or slow reader on one side must stop the sender on the other side once the pipe
(and the small socket buffers set here) are full, while the relay goes on reading into the
pipe as long as it has room; an EOF must reach the destination only after the bytes still in
the pipe. The tests look into the relay's directions (``in_pipe``, ``capacity``) through a
subclass that records what each read found.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from flowrt.connector import relay

if not relay.USE_SPLICE:
    pytest.skip("no splice(2) on this system", allow_module_level=True)

from flowrt.connector import _splice  # Linux only (fcntl, splice): after the skip

#: Small socket buffers (the kernel doubles them), so that the pipe is the buffer that counts.
SOCKET_BUFFER = 64 * 1024
TIMEOUT = 10.0


class _Watched(_splice._Direction):
    """A direction that records, for every read, how many bytes the pipe held around it."""

    seen: ClassVar[dict[str, _Watched]] = {}  # by side, filled as the relay starts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0
        self.reads_into_a_holding_pipe = 0  # reads while earlier bytes were still unwritten
        self.peak = 0  # the most bytes in the pipe, right after a read
        _Watched.seen[self._side] = self

    def _on_readable(self) -> None:
        before = self.in_pipe
        moved = self._relay.bytes_up + self._relay.bytes_down
        super()._on_readable()
        count = self._relay.bytes_up + self._relay.bytes_down - moved
        if count:
            self.reads += 1
            self.reads_into_a_holding_pipe += before > 0
            self.peak = max(self.peak, before + count)


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Watched]:
    _Watched.seen = {}
    monkeypatch.setattr(_splice, "_Direction", _Watched)
    return _Watched.seen


async def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection, non-blocking, with small buffers."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        near = socket.socket()
        near.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            near.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        await loop.sock_connect(near, listener.getsockname())
        far, _ = await loop.sock_accept(listener)
    far.setblocking(False)
    far.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    return near, far


@dataclasses.dataclass
class _Relayed:
    """A running SpliceRelay between ``client_peer`` (our client) and ``backend_peer``."""

    client_peer: socket.socket
    backend_peer: socket.socket
    relay: _splice.SpliceRelay
    task: asyncio.Task[None]


@pytest.fixture
async def relayed(watched: dict[str, _Watched]) -> AsyncIterator[_Relayed]:
    client_peer, client = await _tcp_pair()
    backend, backend_peer = await _tcp_pair()
    relay_ = _splice.SpliceRelay(client, backend, idle_timeout=60)
    r = _Relayed(client_peer, backend_peer, relay_, asyncio.create_task(relay_.run()))
    yield r
    r.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await r.task
    r.client_peer.close()
    r.backend_peer.close()


async def _send_until_stalled(sock: socket.socket, data: bytes, quiet: float = 0.3) -> int:
    """Send ``data`` without blocking until the kernel takes nothing more for ``quiet``
    seconds (or all is sent); how many bytes it took."""
    loop = asyncio.get_running_loop()
    sent, last_progress = 0, loop.time()
    while sent < len(data) and loop.time() - last_progress < quiet:
        try:
            sent += sock.send(data[sent : sent + 65536])
            last_progress = loop.time()
        except BlockingIOError:
            await asyncio.sleep(0.01)
    return sent


async def _receive(sock: socket.socket, count: int, pause: float = 0.0) -> bytes:
    """``count`` bytes, read in small pieces with ``pause`` seconds between them."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    async with asyncio.timeout(TIMEOUT):
        while len(got) < count:
            data = await loop.sock_recv(sock, min(32768, count - len(got)))
            if not data:
                break
            got += data
            if pause:
                await asyncio.sleep(pause)
    return bytes(got)


async def test_a_paused_reader_stops_the_sender_with_bounded_bytes_in_flight(
    relayed: _Relayed, watched: dict[str, _Watched]
) -> None:
    loop = asyncio.get_running_loop()
    payload = os.urandom(8 * 1024 * 1024)
    # The back end reads nothing: the sender must be held back, the pipe holding the most.
    taken = await _send_until_stalled(relayed.client_peer, payload)
    up = watched["client"]
    assert 0 < up.capacity <= _splice.PIPE_SIZE
    assert up.in_pipe <= up.capacity and up.peak <= up.capacity
    assert taken < len(payload)
    # Beyond the pipe only the socket buffers hold bytes (each at most 2 x SOCKET_BUFFER,
    # doubled again for the kernel's bookkeeping): the sender is held back.
    assert taken - up.in_pipe <= 4 * 4 * SOCKET_BUFFER
    assert up.in_pipe > up.capacity // 2  # the pipe filled up before the sender stalled

    # A slow reader: the relay keeps reading into the pipe while it still holds bytes.
    sending = loop.create_task(loop.sock_sendall(relayed.client_peer, payload[taken:]))
    received = await _receive(relayed.backend_peer, len(payload), pause=0.001)
    await sending
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert up.reads_into_a_holding_pipe > 0
    assert up.peak <= up.capacity and up.in_pipe == 0
    assert relayed.relay.bytes_up == len(payload)


async def test_the_eof_follows_the_bytes_still_in_the_pipe(
    relayed: _Relayed, watched: dict[str, _Watched]
) -> None:
    loop = asyncio.get_running_loop()
    payload = os.urandom(768 * 1024)  # more than the socket buffers, less than the pipe
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_sendall(relayed.client_peer, payload)
    relayed.client_peer.shutdown(socket.SHUT_WR)
    up = watched["client"]
    async with asyncio.timeout(TIMEOUT):
        while not up._eof:
            await asyncio.sleep(0.01)
    # The relay has read the EOF while bytes wait in the pipe: no half-close yet.
    assert up.in_pipe > 0 and not up.done.done()
    assert relayed.relay.closed_by == ""
    received = await _receive(relayed.backend_peer, len(payload) + 1)
    assert received == payload  # every byte, then the EOF
    async with asyncio.timeout(TIMEOUT):
        assert await up.done is None
    assert relayed.relay.closed_by == "client"
    # The other direction goes on: the back end can still answer after the half-close.
    await loop.sock_sendall(relayed.backend_peer, b"250 OK\r\n")
    assert await _receive(relayed.client_peer, 8) == b"250 OK\r\n"
    relayed.backend_peer.shutdown(socket.SHUT_WR)
    async with asyncio.timeout(TIMEOUT):
        await relayed.task
    assert relayed.relay.bytes_up == len(payload) and relayed.relay.bytes_down == 8
