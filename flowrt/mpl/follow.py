"""Following the MPL as it is written (``flowrt mpl tail``).

Why by row id and not by time: the recorder upserts an entry (it is written when it begins and
again when it ends) and an upsert keeps the row id, so ``id > last seen`` finds exactly the
entries that are new since the last poll, with no extra index. Entries seen while unfinished
(PROCESSING, RETRY) are re-read by message ID until they reach a final status, which is how a
change to COMPLETED or FAILED is noticed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowrt.mpl.model import MplStatus, MplSummary

if TYPE_CHECKING:
    from flowrt.store.api import MplBackend

__all__ = ["Follower"]

_PAGE = 1000


class Follower:
    """Reports entries that are new, or whose status changed, since the previous poll.

    Starts at the end of the log (entries already final are not reported); entries that are
    unfinished at the start are watched, so their completion is reported. ``start_row=0``
    reports everything that is stored, for a log that did not exist when following began.
    """

    def __init__(
        self,
        store: MplBackend,
        *,
        flow: str | None = None,
        status: MplStatus | None = None,
        start_row: int | None = None,
    ) -> None:
        self._store = store
        self._flow = flow
        self._status = status
        self._last_row = store.last_row_id() if start_row is None else start_row
        self._watched: dict[str, MplStatus] = {}
        if start_row is None:
            self._watched = {s.message_id: s.status for s in store.unfinished(flow=flow)}

    def poll(self) -> list[MplSummary]:
        """Changes since the last poll: watched entries whose status changed, then new
        entries in the order they were first written; filtered by status if one was given."""
        found: list[MplSummary] = []
        if self._watched:
            current = self._store.summaries(self._watched)
            for message_id, before in list(self._watched.items()):
                summary = current.get(message_id)
                if summary is None or summary.status.is_final:
                    del self._watched[message_id]  # finished (or purged meanwhile)
                else:
                    self._watched[message_id] = summary.status
                if summary is not None and summary.status != before:
                    found.append(summary)
        while True:
            rows = self._store.rows_after(self._last_row, flow=self._flow, limit=_PAGE)
            for row_id, summary in rows:
                self._last_row = row_id
                if not summary.status.is_final:
                    self._watched[summary.message_id] = summary.status
                found.append(summary)
            if len(rows) < _PAGE:
                break
        return [s for s in found if self._status is None or s.status == self._status]
