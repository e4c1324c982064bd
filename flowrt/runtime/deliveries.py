"""Recipients' delivery rows written together: once per turn of the event loop, in one
transaction, instead of one commit per SMTP transaction.

    writer = DeliveryWriter(state)
    ledger = RecipientLedger(rows, save=writer.saver(scope, key))
    writer.flush()   # before the mail's record (the source's group commit calls it)

Why this keeps the order rule against kill -9: a reply is taken from the socket in one turn
of the loop and its rows are committed at the start of the next (``call_soon`` runs before
any other reply can be read), so no second SMTP transaction, of this mail or another, can
get a reply before the rows of the first are durable; a kill between the ``250`` and the
commit re-sends that one transaction, which is the window every SMTP client has (the
reply was read but not yet recorded). :meth:`flush` also runs before every mail record and
failure count, so a retry never starts from a record without its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from flowrt.errors import FlowrtError, summary
from flowrt.recipients import Row
from flowrt.store.api import StateBackend

__all__ = ["DeliveryWriter"]

_log = structlog.get_logger("flowrt.runtime")


class DeliveryWriter:
    def __init__(self, state: StateBackend) -> None:
        self._state = state
        self._waiting: list[tuple[str, str, list[Row]]] = []

    def saver(self, scope: str, key: str) -> Callable[[list[Row]], None]:
        return lambda rows: self.add(scope, key, rows)

    def add(self, scope: str, key: str, rows: list[Row]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): written at once
            self._state.save_deliveries(scope, key, rows)
            return
        if not self._waiting:
            loop.call_soon(self._flush_logged)
        self._waiting.append((scope, key, rows))

    def rows(self, scope: str, key: str, *, stored: bool = True) -> list[Row]:
        """A mail's rows: the state DB's, with those still waiting to be written over them.
        A write that failed (the store away for a moment) must not make the mail's next
        attempt forget who has it already and send to them again. ``stored=False``: the
        source looked it up already, the state DB has none."""
        found = self._state.deliveries(scope, key) if stored else []
        merged = {(r[0], r[1]): r for r in found}
        for waiting_scope, waiting_key, rows in self._waiting:
            if waiting_scope == scope and waiting_key == key:
                merged.update(((r[0], r[1]), r) for r in rows)
        return sorted(merged.values())

    def flush(self) -> None:
        """Commit the waiting rows now; raises FlowrtError when the state DB fails (the
        rows stay waiting for the next flush)."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        batch: Callable[[], contextlib.AbstractContextManager[Any]] = getattr(
            self._state, "batch", contextlib.nullcontext
        )
        try:
            with batch():
                for scope, key, rows in waiting:
                    self._state.save_deliveries(scope, key, rows)
        except FlowrtError:
            self._waiting = waiting + self._waiting
            raise

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except FlowrtError as exc:  # tried again before the mail's record is written
            _log.warning("delivery state write failed; retried", error=summary(exc))
