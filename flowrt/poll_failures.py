"""The poll-failure log: every poll of a flow's sender that could not run (connect, TLS,
login, folder, a mailbox lock held elsewhere), with its chain and hint, in the state DB.

Why not the MPL: an MPL entry is one message and its final state; a failed poll has no
message, and mixing the two would put non-messages into ``mpl list --status FAILED`` and
its counts. Why not only the poller's health: the health keeps the last error as one line;
operators need the chain, the hint and the history to see when a mailbox stopped working.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from flowrt.errors import (
    AuthenticationFailedException,
    FolderNotFoundException,
    IOException,
    MailboxLockedException,
    MailConnectException,
    SSLHandshakeException,
    StoreClosedException,
    chain_levels,
    chain_of,
    find_hint,
    render_chain,
    summary,
)

__all__ = ["KEEP_PER_POLLER", "PollFailure", "classify", "from_exception"]

KEEP_PER_POLLER = 500  # the newest failures of each poller; older ones are pruned on insert

# the kind of a failure, by the first level of the chain of that type
_KINDS: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((MailboxLockedException,), "lock"),
    ((AuthenticationFailedException,), "login"),
    ((FolderNotFoundException,), "folder"),
    ((SSLHandshakeException,), "tls"),
    ((IOException, MailConnectException, StoreClosedException), "connect"),
)


@dataclasses.dataclass(frozen=True)
class PollFailure:
    """One poll that did not run, as ``flowrt status --failures`` lists it."""

    poller: str
    flow: str
    at: float
    kind: str  # connect, tls, login, folder, lock, other
    summary: str
    chain: str
    levels: list[dict[str, Any]]
    hint: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def row(self) -> tuple[Any, ...]:
        return (
            self.poller,
            self.flow,
            self.at,
            self.kind,
            self.summary,
            self.chain,
            json.dumps(self.levels),
            self.hint,
        )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> PollFailure:
        poller, flow, at, kind, text, chain, levels, hint = row
        return cls(poller, flow, at, kind, text, chain, json.loads(levels or "[]"), hint)


COLUMNS = "poller, flow, at, kind, summary, chain, levels, hint"


def insert_sql(mark: str) -> str:
    """The INSERT of one failure; ``mark`` is the driver's placeholder (``?`` or ``%s``)."""
    return f"INSERT INTO poll_failures ({COLUMNS}) VALUES ({', '.join([mark] * 8)})"


def prune_sql(mark: str) -> str:
    """Deletes a poller's failures older than its newest KEEP_PER_POLLER; args: poller,
    poller, KEEP_PER_POLLER."""
    return (
        f"DELETE FROM poll_failures WHERE poller = {mark} AND id <= ("
        f"SELECT id FROM poll_failures WHERE poller = {mark} ORDER BY id DESC "
        f"LIMIT 1 OFFSET {mark})"
    )


def select_sql(
    mark: str, flow: str | None, since: float | None, limit: int
) -> tuple[str, list[Any]]:
    """The newest failures first, of one flow or of all, with their arguments."""
    sql = f"SELECT {COLUMNS} FROM poll_failures WHERE 1 = 1"
    args: list[Any] = []
    if flow is not None:
        sql += f" AND flow = {mark}"
        args.append(flow)
    if since is not None:
        sql += f" AND at > {mark}"
        args.append(since)
    sql += f" ORDER BY id DESC LIMIT {mark}"
    args.append(limit)
    return sql, args


def classify(exc: BaseException) -> str:
    """What an operator has to fix: the login, the folder, the TLS trust, the connection."""
    chain = chain_of(exc)
    for types, kind in _KINDS:
        if any(isinstance(e, types) for e in chain):
            return kind
    return "other"


def from_exception(poller: str, flow: str, at: float, exc: BaseException) -> PollFailure:
    return PollFailure(
        poller=poller,
        flow=flow,
        at=at,
        kind=classify(exc),
        summary=summary(exc),
        chain=render_chain(exc),
        levels=[level.to_dict() for level in chain_levels(exc)],
        hint=find_hint(exc) or "",
    )
