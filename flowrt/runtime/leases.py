"""Lease locks held while a source works: taken, renewed in the background, released.

A lease that is not renewed expires, so a dead runtime does not block a mailbox for good;
a lease that was taken away (``flowrt locks release``, or taken over after it expired) sets
``lost``, and the holder stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from flowrt.errors import FlowrtError, summary
from flowrt.source_state import LeaseBusy, LockInfo

__all__ = ["HeldLease", "LockStore"]

_log = structlog.get_logger("flowrt.runtime")


class LockStore(Protocol):
    def acquire_lock(
        self, key: str, owner: str, ttl: float, *, info: str = ""
    ) -> tuple[bool, LockInfo]: ...
    def renew_lock(self, key: str, owner: str, ttl: float) -> bool: ...
    def release_lock(self, key: str, owner: str) -> bool: ...


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
        self._renewer: asyncio.Future[None] | None = None

    async def __aenter__(self) -> HeldLease:
        taken, holder = self._store.acquire_lock(self.key, self.owner, self.ttl, info=self.info)
        if not taken:
            raise LeaseBusy(holder)
        self.lost.clear()
        self._renewer = asyncio.ensure_future(self._renew())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
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
