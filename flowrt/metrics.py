"""What only the running process can count, for the monitor's Prometheus ``/metrics``.

A module of its own, beside the core and the adapters: the runtime counts messages and sends,
an adapter's source counts its polls, and neither needs to know the other.

One registry per process (never prometheus-client's global one, so that tests and the
standalone monitor start clean). The runtime calls the small functions below; they cost a
dictionary lookup and an addition, so they sit on the message path without a measurable price.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import HistogramMetricFamily, Metric

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
    "add_durations",
    "counter_totals",
    "dead_letter",
    "duration_totals",
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


class _Durations:
    """``flowrt_message_duration_seconds``, by flow: a histogram kept here rather than in
    prometheus-client's ``Histogram``, so that what a flow's worker processes observed can
    be added in (:func:`add_durations`)."""

    NAME = "flowrt_message_duration_seconds"
    HELP = "Time from a message's start to its final status."
    BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
    LABELS = [repr(float(bound)) for bound in BOUNDS] + ["+Inf"]  # le="1.0", as Prometheus

    def __init__(self) -> None:
        # flow -> the count in each bucket (not cumulative; the last is above 120 s), the sum
        self.rows: dict[str, list[float]] = {}

    def row(self, flow: str) -> list[float]:
        found = self.rows.get(flow)
        if found is None:
            found = self.rows[flow] = [0.0] * (len(self.BOUNDS) + 2)
        return found

    def observe(self, flow: str, seconds: float) -> None:
        row = self.row(flow)
        row[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        row[-1] += seconds

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.NAME, self.HELP, labels=["flow"])

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.NAME, self.HELP, labels=["flow"])
        for flow, row in list(self.rows.items()):
            counts = itertools.accumulate(row[:-1])
            family.add_metric([flow], list(zip(self.LABELS, counts, strict=True)), row[-1])
        yield family


DURATION = _Durations()
REGISTRY.register(DURATION)
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
    DURATION.observe(flow, seconds)


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


def duration_totals() -> dict[str, list[float]]:
    """The duration histogram's rows in this process (flow: bucket counts, then the sum),
    which a worker process reports beside :func:`counter_totals`."""
    return {flow: list(row) for flow, row in DURATION.rows.items()}


def add_durations(totals: dict[str, list[float]], seen: dict[str, list[float]]) -> None:
    """Add what a worker's duration rows gained since ``seen`` (its last rows, updated
    here) into this process's histogram, as :func:`add_counts` does for counters."""
    for flow, row in totals.items():
        if len(row) != len(DURATION.BOUNDS) + 2:
            continue  # another version's buckets: not comparable
        before = seen.get(flow)
        if before is None or sum(row[:-1]) < sum(before[:-1]):  # new, or started over
            before = [0.0] * len(row)
        seen[flow] = list(row)
        mine = DURATION.row(flow)
        for i, (now, then) in enumerate(zip(row, before, strict=True)):
            mine[i] += now - then


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
