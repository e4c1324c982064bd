"""How a handed-over message ends: the verdict a flow gives its source after each attempt.

A mail is handed over at most ``max-attempts`` times (across polls and restarts: the source
counts them in the state DB and says which attempt this is); between two hand-overs it waits
the flow's backoff. After the last attempt, or at once for an error that cannot heal when
the flow says ``permanent-errors dead-letter``, it goes to its dead-letter place. Its last
MPL entry is then ESCALATED and carries the property ``dead-letter`` (where it went), which
is what :meth:`flowrt.mpl.store.MplStore.dead_letters` and ``flowrt deadletter list`` find.
If that place cannot take it (a missing folder, a dead-letter receiver that fails), the
entry says so (FAILED, property ``dead-letter-error``), and the mail stays in the mailbox,
to be tried again after the backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flowrt.dsl.model import DeadLetter, RetryPolicy
from flowrt.engine.exchange import Attachment, Exchange
from flowrt.engine.runner import Result
from flowrt.errors import (
    FlowError,
    MessagingException,
    find_hint,
    render_chain,
    summary,
)
from flowrt.mpl.model import MplStatus
from flowrt.mpl.recorder import EntryHandle
from flowrt.recipients import RecipientLedger
from flowrt.source_state import SOURCE_KEY, SOURCE_RAW, SOURCE_SCOPE

__all__ = [
    "DEAD_LETTER",
    "DEAD_LETTER_ERROR",
    "SOURCE_PROPERTY",
    "dead_letter_exchange",
    "is_permanent",
    "record_recipients",
    "verdict_for",
]

DEAD_LETTER = "dead-letter"
"""MPL property of a dead-lettered message: where it went (``keyword $flowrt-dead``...)."""
DEAD_LETTER_ERROR = "dead-letter-error"
SOURCE_PROPERTY = "source"
"""MPL property ``SCOPE KEY`` of a handed-over mail: what ``flowrt deadletter replay`` needs."""


def is_permanent(error: BaseException | None) -> bool:
    """An error that cannot heal by waiting: a mail error that says it is not retryable
    (a 5xx reply, a wrong password, content refused for safety)."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, MessagingException) and not error.retryable:
            return True
        error = error.__cause__
        seen += 1
    return False


def place_of(dead: DeadLetter) -> str:
    if dead.kind == "default":
        return "default (keyword $flowrt-dead; POP3: kept)"
    return dead.describe()


def verdict_for(
    result: Result,
    *,
    policy: RetryPolicy,
    attempt: int,
    unreadable: bool,
    now: float | None = None,
) -> tuple[bool, float]:
    """(attempts over, next hand-over time) after a failed attempt."""
    now = time.time() if now is None else now
    delay = policy.delay(attempt) if policy.interval.total_seconds() > 0 else 0.0
    retry_at = now + delay if delay else 0.0
    permanent = unreadable or is_permanent(result.error)
    over = attempt >= policy.max_attempts or (
        permanent and policy.permanent_errors == "dead-letter"
    )
    return over, retry_at


def mark_dead(entry: EntryHandle | None, result: Result, dead: DeadLetter, attempt: int) -> None:
    """The last attempt's entry becomes the dead letter's final entry."""
    if entry is None:
        return
    entry.custom_property(DEAD_LETTER, place_of(dead))
    entry.custom_property("attempts", str(attempt))
    error = result.error or FlowError("the flow did not complete")
    entry.fail(error, MplStatus.ESCALATED, result.failed_step)


def dead_letter_failed(
    entry: EntryHandle | None, dead: DeadLetter, on_error: Callable[[str], None]
) -> Callable[[BaseException], None]:
    """What the source calls when the dead-letter place cannot take the mail."""

    def failed(exc: BaseException) -> None:
        text = f"dead-letter {place_of(dead)} failed: {summary(exc)}"
        if entry is not None:
            entry.custom_property(DEAD_LETTER_ERROR, text)
            error = FlowError(text, hint=find_hint(exc))
            error.__cause__ = exc
            entry.fail(error, MplStatus.FAILED, "dead-letter")
        on_error(text)

    return failed


def dead_letter_exchange(exchange: Exchange, result: Result, attempt: int) -> Exchange:
    """What a dead-letter receiver gets: the error chain and hint above the original text,
    and the original mail attached as message/rfc822."""
    dead = exchange.copy()
    error = result.error
    chain = render_chain(error) if error is not None else "the flow did not complete"
    hint = find_hint(error) if error is not None else None
    lines = [
        f"flowrt gave up on this message after {attempt} attempt(s).",
        f"MPL entry: {result.message_id}",
        f"failed step: {result.failed_step or '-'}",
        "",
        chain,
    ]
    if hint:
        lines += ["", f"hint: {hint}"]
    dead.set_text("\n".join(lines) + "\n\n--- original text ---\n" + exchange.text)
    dead.content_type = "text/plain"
    raw = exchange.properties.get(SOURCE_RAW)
    if isinstance(raw, bytes):
        # for a receiver with `attachments from-message`; one with `attachments original`
        # attaches ``original`` (set when the sender read the mail)
        dead.attachments.append(Attachment("original.eml", "message/rfc822", raw))
        if dead.original is None:
            dead.original = raw
    dead.properties[DEAD_LETTER] = "receiver"
    return dead


def record_recipients(entry: EntryHandle | None, ledger: RecipientLedger | None) -> None:
    """Per recipient, in the MPL: ``recipient.sent`` / ``.refused`` / ``.pending`` with the
    receiver, the address and the server's reply."""
    if entry is None or ledger is None:
        return
    for receiver, address, state, reply in ledger.rows(touched_only=True):
        value = f"{receiver}: {address}" + (f" ({reply})" if reply else "")
        entry.custom_property(f"recipient.{state}", value)


def source_of(exchange: Exchange) -> tuple[str, str]:
    scope = exchange.properties.get(SOURCE_SCOPE)
    key = exchange.properties.get(SOURCE_KEY)
    return (scope, key) if isinstance(scope, str) and isinstance(key, str) and key else ("", "")


def failure_text(result: Result) -> str:
    return summary(result.error) if result.error is not None else "the flow did not complete"
