"""A bounded number of mails in flight: the poller starts one task per mail, at most
``limit`` at a time, so the next mails are fetched while earlier ones run through the flow.

    flight = InFlight(8)
    await flight.slot()        # waits while 8 run: a slow receiver holds back the fetching
    flight.spawn(work())       # or flight.release() when it decides not to start one
    flight.free()              # in work(): its flow is done, the next mail may start while
                               # this one waits for its record (the group commit)
    await flight.drain()       # every started mail ends; raises the first task's error

With ``limit`` 1 a mail starts only when the one before it is through its flow (sent), in
the order they were spawned (the semaphore is FIFO): the strict mailbox order of a flow
that needs it.
A started mail is never cancelled by an error of another, or of the fetching: it may be in
an SMTP transaction, and cutting that is what sends a mail twice. Only ``cancel()`` (the
runtime's hard cap at stop) cuts them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["InFlight"]


class InFlight:
    def __init__(self, limit: int, on_end: Callable[[], None] = lambda: None) -> None:
        if limit < 1:
            raise ValueError("in-flight must be at least 1")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding: set[asyncio.Task[None]] = set()  # tasks that still hold their slot
        self._error: BaseException | None = None
        self._on_end = on_end  # one mail fewer in flight: a group commit may be due now

    async def slot(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the slot taken by :meth:`slot`."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        self._holding.add(task)
        task.add_done_callback(self._ended)

    def free(self) -> None:
        """The calling task's mail is through its flow: its slot goes to the next mail."""
        task = asyncio.current_task()
        if task in self._holding:
            self._holding.discard(task)
            self._slots.release()

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task in self._holding:
            self._holding.discard(task)
            self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
        self._on_end()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def cancel(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
