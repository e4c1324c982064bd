"""Per-recipient delivery state of one message, shared by the runtime and a receiver.

The runtime loads it from the state DB (keyed like the idempotency record of the mail) and
puts it into the exchange under :data:`LEDGER`; a receiver asks it whom it still has to send
to and records what the server said to each address. So a retry (in the same run or a later
poll, after a restart too) sends only to recipients without the mail: ``sent`` and
``refused`` (a 5xx reply, final) are never sent to again, ``pending`` (a 4xx reply) is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["LEDGER", "PENDING", "REFUSED", "SENT", "RecipientLedger", "Row"]

LEDGER = "source.recipients"
SENT = "sent"
REFUSED = "refused"
PENDING = "pending"

Row = tuple[str, str, str, str]
"""(receiver, recipient, state, reply)"""


class RecipientLedger:
    """What each recipient of each receiver got so far; ``save`` persists changed rows
    (called at once: a crash right after a send must not forget who has the mail)."""

    def __init__(
        self, rows: Iterable[Row] = (), *, save: Callable[[list[Row]], None] | None = None
    ) -> None:
        self._rows: dict[tuple[str, str], tuple[str, str]] = {
            (receiver, address): (state, reply) for receiver, address, state, reply in rows
        }
        self._save = save
        self.touched: set[tuple[str, str]] = set()

    @staticmethod
    def receiver_key(name: str, branch: str = "") -> str:
        """A split branch is a message of its own: each keeps its own recipients."""
        return f"{name}#{branch}" if branch else name

    def finished(self, receiver: str, address: str) -> bool:
        """The address has the mail, or refused it for good: not sent to again."""
        state = self._rows.get((receiver, address), (PENDING, ""))[0]
        return state in (SENT, REFUSED)

    def refused(self, receiver: str) -> dict[str, str]:
        """Addresses of ``receiver`` refused for good, with the server's reply."""
        return {
            address: reply
            for (name, address), (state, reply) in self._rows.items()
            if name == receiver and state == REFUSED
        }

    def sent(self, receiver: str) -> list[str]:
        return [
            address
            for (name, address), (state, _) in self._rows.items()
            if name == receiver and state == SENT
        ]

    def record(self, receiver: str, results: Iterable[tuple[str, str, str]]) -> None:
        """(address, state, reply) per recipient of one transaction."""
        changed: list[Row] = []
        for address, state, reply in results:
            self._rows[(receiver, address)] = (state, reply)
            self.touched.add((receiver, address))
            changed.append((receiver, address, state, reply))
        if changed and self._save is not None:
            self._save(changed)

    def rows(self, *, touched_only: bool = False) -> list[Row]:
        return [
            (receiver, address, state, reply)
            for (receiver, address), (state, reply) in sorted(self._rows.items())
            if not touched_only or (receiver, address) in self.touched
        ]


def state_of(reply: str) -> str:
    """``refused`` for a 5xx reply (final), ``pending`` for anything else (4xx: try again)."""
    return REFUSED if reply[:1] == "5" else PENDING
