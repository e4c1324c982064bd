"""Where mails that end together are written together, in the order rule's order.

Each mail's ending (its idempotency record, or its failure count) waits here until
``due(waiting)`` says the group is complete (the poller: every mail of the poll waits, or a
whole window's worth does; by default at once), and then for the next turn of the event
loop; then, in one step with no ``await`` in it, ``durable()``
makes the flow's MPL entries and recipients' rows durable (one flush for all of them) and
every waiting record is written, in one transaction of the state store when it offers
``batch()``. So a commit serves the whole window (8 mails at ``in-flight 8``), not the one
or two mails that happen to end in the same turn.

Why waiting is safe: a mail's recipients are durable a loop turn after their SMTP replies
(:mod:`flowrt.runtime.deliveries`), so a kill -9 while finished mails wait for their
records re-sends nothing: they are handed over again and their rows say who has them.
And the mailbox is changed only after the poll's last commit.
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
        due: Callable[[int], bool] = lambda _waiting: True,
    ) -> None:
        # looked up at each commit: a test (or the runtime) may swap the handler
        self._durable = durable
        self._batch = batch or contextlib.nullcontext
        self._group_due = due
        self._waiting: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._due = False  # a commit is scheduled for the next turn

    async def write(self, record: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append((record, future))
        self.poke()
        return await future

    def poke(self) -> None:
        """Commit at the next turn when the group is due (a mail that ends without a
        record calls this too: the others may be waiting for it)."""
        if self._due or not self._waiting or not self._group_due(len(self._waiting)):
            return
        self._due = True
        asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._due = False
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
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
