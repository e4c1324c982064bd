"""A small pool of live SMTP sessions per target, so that a flow does not connect per mail.

Connecting, TLS and AUTH cost several round trips and a handshake; a mail transaction on an
open session costs four. Sessions are kept per :class:`PoolKey` (server, protection, login,
route: a session is only reused for exactly what it was opened for), at most ``per_target``
at a time, so that concurrent deliveries run side by side on separate connections while the
server sees a bounded number of them.

A session idle for longer than ``check_after`` is asked NOOP before reuse (servers drop idle
clients; a dead session found here costs a reconnect, not a failed mail). One used a moment
ago is taken as it is: if it died anyway, the receiver's one retry on a fresh connection
covers it. Sessions idle for ``idle_timeout`` are closed with QUIT by a sweeper task that runs
only while there are idle sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from flowrt.adapters.mail.smtp.session import SmtpSession
from flowrt.errors import ProcessingError
from flowrt.net import ProxyRoute

log = structlog.get_logger("flowrt.smtp")

Opener = Callable[[], Awaitable[SmtpSession]]


@dataclasses.dataclass(frozen=True)
class PoolKey:
    """What a session was opened for. The route compares with its token, so a changed
    token of an on-premise location gets new sessions."""

    host: str
    port: int
    protection: str
    user: str | None
    credential: str | None
    route: ProxyRoute | None


@dataclasses.dataclass
class PoolStats:
    opened: int = 0
    reused: int = 0
    closed: int = 0


class Lease:
    """One session lent to one delivery. ``discard()`` when its state is no longer known."""

    __slots__ = ("discarded", "reused", "session")

    def __init__(self, session: SmtpSession, reused: bool) -> None:
        self.session = session
        self.reused = reused
        self.discarded = False

    def discard(self) -> None:
        self.discarded = True


class _Target:
    __slots__ = ("busy", "idle", "slots")

    def __init__(self, limit: int) -> None:
        self.idle: list[SmtpSession] = []  # most recently used last: reused first
        self.slots = asyncio.Semaphore(limit)
        self.busy = 0  # leases held or awaited; a target is forgotten only when idle and not busy


class SmtpPool:
    """Sessions per target: ``async with pool.lease(key, opener) as lease: ...``."""

    def __init__(
        self, *, per_target: int = 4, idle_timeout: float = 60.0, check_after: float = 2.0
    ) -> None:
        if per_target < 1:
            raise ValueError("per_target must be at least 1")
        self.per_target = per_target
        self.idle_timeout = idle_timeout
        self.check_after = check_after
        self.stats = PoolStats()
        self._targets: dict[PoolKey, _Target] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @contextlib.asynccontextmanager
    async def lease(
        self, key: PoolKey, opener: Opener, *, fresh: bool = False
    ) -> AsyncIterator[Lease]:
        """A session for ``key``: an idle one that is still good, or a new one from ``opener``
        (always a new one with ``fresh``: after a lost connection, the idle ones may be as
        dead as it was).

        Waits while ``per_target`` sessions for ``key`` are in use. The session goes back to
        the pool afterwards unless it was discarded, died, or an unexpected error (anything
        but a mapped :class:`~flowrt.errors.ProcessingError`, cancellation included) left its
        protocol state unknown.
        """
        if self._closed:
            raise RuntimeError("the SMTP pool is closed")
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = _Target(self.per_target)
        target.busy += 1  # counted while waiting too, so the sweeper keeps the target
        try:
            async with target.slots:
                session, reused = await self._checkout(target, opener, fresh)
                lease = Lease(session, reused)
                try:
                    yield lease
                except ProcessingError:
                    raise
                except BaseException:
                    lease.discard()
                    raise
                finally:
                    self._checkin(target, lease)
        finally:
            target.busy -= 1

    async def _checkout(
        self, target: _Target, opener: Opener, fresh: bool
    ) -> tuple[SmtpSession, bool]:
        while target.idle and not fresh:
            session = target.idle.pop()
            idle_for = time.monotonic() - session.last_used
            if not session.alive or idle_for > self.idle_timeout:
                await self._close(session)
                continue
            if idle_for > self.check_after and not await session.healthy():
                log.debug("smtp.pool_dead_session", **session.target.log_fields())
                self._abort(session)
                continue
            self.stats.reused += 1
            return session, True
        session = await opener()
        self.stats.opened += 1
        return session, False

    def _checkin(self, target: _Target, lease: Lease) -> None:
        session = lease.session
        if lease.discarded or not session.alive or self._closed:
            self._abort(session)
            return
        session.last_used = time.monotonic()
        target.idle.append(session)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close sessions idle past ``idle_timeout``; ends when nothing is idle."""
        while True:
            idle = [s for t in self._targets.values() for s in t.idle]
            if not idle:
                return
            oldest = min(s.last_used for s in idle)
            await asyncio.sleep(max(0.05, oldest + self.idle_timeout - time.monotonic()))
            now = time.monotonic()
            expired: list[SmtpSession] = []
            for target in self._targets.values():
                keep = [s for s in target.idle if now - s.last_used < self.idle_timeout]
                expired += [s for s in target.idle if s not in keep]
                target.idle[:] = keep
            if expired:
                await asyncio.gather(*(self._close(s) for s in expired))
            self._targets = {k: t for k, t in self._targets.items() if t.idle or t.busy}

    async def _close(self, session: SmtpSession) -> None:
        self.stats.closed += 1
        await session.close()

    def _abort(self, session: SmtpSession) -> None:
        self.stats.closed += 1
        session.abort()

    def idle_count(self) -> int:
        return sum(len(t.idle) for t in self._targets.values())

    async def aclose(self) -> None:
        """QUIT every idle session; sessions in use are closed when they come back."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        idle = [s for t in self._targets.values() for s in t.idle]
        for target in self._targets.values():
            target.idle.clear()
        await asyncio.gather(*(self._close(s) for s in idle))
