"""At most ``limit`` mails per recipient per 24 hours; what is over it is held back, counted,
and summarised (a digest) in the next mail the recipient is allowed, never silently lost."""

from __future__ import annotations

import dataclasses

from flowrt.notify.config import WINDOW
from flowrt.notify.store import Attempt, NotifyLog

__all__ = ["Limiter"]


@dataclasses.dataclass(frozen=True)
class Limiter:
    store: NotifyLog
    limit: int
    window: float = WINDOW

    def allows(self, recipient: str, now: float) -> bool:
        """Whether one more mail may go to ``recipient`` now (the window counts from the
        last reset when that is more recent than 24 hours)."""
        return self.store.sent_in_window(recipient, now=now, window=self.window) < self.limit

    def digest(self, recipient: str) -> list[Attempt]:
        """The alerts held back for ``recipient``, to be summarised in its next mail."""
        return self.store.held(recipient)
