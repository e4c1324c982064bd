"""Where mails that end together are written together, in the order rule's order.

Each mail's ending (its idempotency record, or its failure count) waits here for the next
turn of the event loop; then, in one step with no ``await`` in it, ``durable()`` makes the
flow's MPL entries durable (one flush for all of them) and every waiting record is written,
in one transaction of the state store when it offers ``batch()``.
No other mail's work can run between an entry made durable and its record, so a kill -9
leaves the same window as one mail at a time: an entry without a record (the mail is handed
over again, its recipients' state says what was sent), never a record without an entry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit:
    def __init__(
        self,
        durable: Callable[[], Callable[[], None] | None],
        batch: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        # looked up at each commit: a test (or the runtime) may swap the handler
        self._durable = durable
        self._batch = batch or contextlib.nullcontext
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
        try:
            if durable is not None:
                durable()
        except Exception as exc:  # no entry made durable: no record may be written
            for _record, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._batch():  # one transaction for all the records
                for record, _future in waiting:
                    # written even when its waiter was cancelled: the flow did finish
                    try:
                        outcomes.append((True, record()))
                    except Exception as exc:
                        outcomes.append((False, exc))
        except Exception as exc:  # the commit itself failed: no record was written
            outcomes = [(False, exc)] * len(waiting)
        for (_record, future), (ok, value) in zip(waiting, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
