"""Lease locks held while a source works: taken, renewed in the background, released.

A lease that is not renewed expires, so a dead runtime does not block a mailbox for good;
a lease that was taken away (``flowrt locks release``, or taken over after it expired) sets
``lost``, and the holder stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Protocol

import structlog

from flowrt.errors import FlowrtError, summary
from flowrt.source_state import Fence, LeaseBusy, LockInfo

__all__ = ["HeldLease", "LockStore", "check_current_lease"]

#: the lease the running task works under (set for its ``async with`` block): a mail is
#: handled inside its source's lease, so whatever handles it can check the lease is still
#: ours without being handed it (see check_current_lease)
_current: contextvars.ContextVar[HeldLease | None] = contextvars.ContextVar(
    "flowrt_lease", default=None
)


def check_current_lease() -> None:
    """LeaseLost when the lease this task works under was taken over; nothing outside one."""
    lease = _current.get()
    if lease is not None:
        lease.check()


_log = structlog.get_logger("flowrt.runtime")


class LockStore(Protocol):
    def acquire_lock(
        self, key: str, owner: str, ttl: float, *, info: str = ""
    ) -> tuple[bool, LockInfo]: ...
    def renew_lock(self, key: str, owner: str, ttl: float) -> bool: ...
    def release_lock(self, key: str, owner: str) -> bool: ...
    def check_fence(self, fence: Fence) -> None: ...


class HeldLease:
    """``async with HeldLease(store, key, owner, ttl) as lease:`` holds ``key`` for the
    block (raising :class:`LeaseBusy` when another owner holds it), renewing it every third
    of ``ttl``; ``lease.lost`` is set when it was taken away."""

    def __init__(self, store: LockStore, key: str, owner: str, ttl: float, *, info: str = ""):
        self._store = store
        self.key = key
        self.owner = owner
        self.ttl = ttl
        self.info = info
        self.lost = asyncio.Event()
        self.fence = Fence(key, owner)
        self._renewer: asyncio.Future[None] | None = None
        self._token: contextvars.Token[HeldLease | None] | None = None

    async def __aenter__(self) -> HeldLease:
        taken, holder = self._store.acquire_lock(self.key, self.owner, self.ttl, info=self.info)
        if not taken:
            raise LeaseBusy(holder)
        self.fence = holder.fence
        self.lost.clear()
        self._renewer = asyncio.ensure_future(self._renew())
        self._token = _current.set(self)
        return self

    def check(self) -> None:
        """LeaseLost unless this lease is still the one in force (in the store)."""
        self._store.check_fence(self.fence)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(FlowrtError):
            self._store.release_lock(self.key, self.owner)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                kept = self._store.renew_lock(self.key, self.owner, self.ttl)
            except FlowrtError as exc:  # try again next time; the lease has slack
                _log.warning("could not renew the lock", lock=self.key, error=summary(exc))
                continue
            if not kept:
                self.lost.set()
                return
