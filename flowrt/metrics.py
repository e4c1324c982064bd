"""What only the running process can count, for the monitor's Prometheus ``/metrics``.

A module of its own, beside the core and the adapters: the runtime counts messages and sends,
an adapter's source counts its polls, and neither needs to know the other.

One registry per process (never prometheus-client's global one, so that tests and the
standalone monitor start clean). The runtime calls the small functions below; they cost a
dictionary lookup and an addition, so they sit on the message path without a measurable price.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from flowrt.errors import (
    AuthenticationFailedException,
    IOException,
    MailConnectException,
    MessagingException,
    SendFailedException,
)

__all__ = [
    "REGISTRY",
    "add_counts",
    "counter_totals",
    "dead_letter",
    "message_done",
    "poll_done",
    "reply_class",
    "send_done",
]

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "flowrt_messages",
    "Messages that reached a final status, by flow and status.",
    ["flow", "status"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "flowrt_message_duration_seconds",
    "Time from a message's start to its final status.",
    ["flow"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
POLLS = Counter("flowrt_polls", "Mailbox polls, by poller.", ["poller"], registry=REGISTRY)
POLL_FAILURES = Counter(
    "flowrt_poll_failures", "Mailbox polls that failed, by poller.", ["poller"], registry=REGISTRY
)
SENDS = Counter(
    "flowrt_receiver_sends",
    "Mails a receiver handed to its SMTP server, by flow and receiver.",
    ["flow", "receiver"],
    registry=REGISTRY,
)
SEND_FAILURES = Counter(
    "flowrt_receiver_send_failures",
    "Receiver sends that failed, by flow, receiver and reply class "
    "(4xx, 5xx, auth, connection, other).",
    ["flow", "receiver", "reply_class"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "flowrt_dead_letters",
    "Messages moved to a dead-letter place after their last attempt.",
    registry=REGISTRY,
)


def message_done(flow: str, status: str, seconds: float) -> None:
    MESSAGES.labels(flow, status).inc()
    DURATION.labels(flow).observe(seconds)


def poll_done(poller: str, *, ok: bool) -> None:
    POLLS.labels(poller).inc()
    if not ok:
        POLL_FAILURES.labels(poller).inc()


def send_done(flow: str, receiver: str, error: BaseException | None = None) -> None:
    if error is None:
        SENDS.labels(flow, receiver).inc()
    else:
        SEND_FAILURES.labels(flow, receiver, reply_class(error)).inc()


def dead_letter() -> None:
    DEAD_LETTERS.inc()


_COUNTERS = {  # by family name (without _total)
    "flowrt_messages": MESSAGES,
    "flowrt_polls": POLLS,
    "flowrt_poll_failures": POLL_FAILURES,
    "flowrt_receiver_sends": SENDS,
    "flowrt_receiver_send_failures": SEND_FAILURES,
    "flowrt_dead_letters": DEAD_LETTERS,
}

Totals = dict[str, float]  # "name{label=value,...}" -> total


def counter_totals() -> list[tuple[str, dict[str, str], float]]:
    """Every counter's totals in this process: (family, labels, total). A worker process of
    a flow (``workers N``) reports them, and the runtime adds them with :func:`add_counts`
    to its own, so that ``/metrics`` counts the whole flow."""
    found = []
    for family in REGISTRY.collect():
        if family.name in _COUNTERS:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found.append((family.name, dict(sample.labels), sample.value))
    return found


def add_counts(totals: list[tuple[str, dict[str, str], float]], seen: Totals) -> None:
    """Add what ``totals`` counted since ``seen`` (the same process's last totals, updated
    here) to this process's counters. A process that started over counts from 0 again."""
    for name, labels, total in totals:
        counter = _COUNTERS.get(name)
        if counter is None:
            continue
        key = name + repr(sorted(labels.items()))
        before = seen.get(key, 0.0)
        added = total - before if total >= before else total
        seen[key] = total
        if added > 0:
            (counter.labels(**labels) if labels else counter).inc(added)


def reply_class(error: BaseException) -> str:
    """The kind of SMTP outcome an error stands for. A refusal with a reply is 4xx when it
    may heal (the error says retryable) and 5xx when not."""
    if isinstance(error, AuthenticationFailedException):
        return "auth"
    if isinstance(error, MailConnectException | IOException):
        return "connection"
    if isinstance(error, SendFailedException) or type(error) is MessagingException:
        return "4xx" if error.retryable else "5xx"
    return "other"
