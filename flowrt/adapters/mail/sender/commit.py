"""Where mails that end together are written together, in the order rule's order.

Each mail's ending (its idempotency record, or its failure count) waits here for the next
turn of the event loop; then, in one step with no ``await`` in it, ``durable()`` makes the
flow's MPL entries durable (one flush for all of them) and every waiting record is written.
No other mail's work can run between an entry made durable and its record, so a kill -9
leaves the same window as one mail at a time: an entry without a record (the mail is handed
over again, its recipients' state says what was sent), never a record without an entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit:
    def __init__(self, durable: Callable[[], Callable[[], None] | None]) -> None:
        # looked up at each commit: a test (or the runtime) may swap the handler
        self._durable = durable
        self._waiting: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    async def write(self, record: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._commit)
        self._waiting.append((record, future))
        return await future

    def _commit(self) -> None:
        waiting, self._waiting = self._waiting, []
        durable = self._durable()
        if durable is not None:
            durable()
        for record, future in waiting:
            # written even when its waiter was cancelled: the flow did finish with the mail
            try:
                value = record()
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(value)
