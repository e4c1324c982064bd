"""Prometheus metrics from what the tenant's files know: certificate expiry per keystore
alias and whether a runtime is up, and, for ``flowrt monitor`` (no runtime in the process),
the message counts by flow and final status from the MPL.

Inside ``flowrt run`` the process's own counters (:mod:`flowrt.metrics`: messages,
durations, polls, sends, dead letters) are served beside these.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flowrt import metrics as process_metrics
from flowrt.errors import FlowrtError
from flowrt.mpl.model import MplStatus
from flowrt.security.keystore import Keystore, valid_until
from flowrt.store import open_mpl
from flowrt.tenant import Tenant

__all__ = ["MetricsSource"]

_MPL_COUNT_TTL = 15.0  # counting 10^6 entries is a scan; scrapes come every 15-60 s


class _TenantCollector(Collector):
    def __init__(self, tenant: Tenant, *, runtime_up: Callable[[], bool], from_mpl: bool) -> None:
        self._tenant = tenant
        self._runtime_up = runtime_up
        self._from_mpl = from_mpl
        self._counts: dict[tuple[str, str], int] = {}
        self._dead = 0  # dead letters not replayed, from the MPL
        self._counted_at = -_MPL_COUNT_TTL
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("flowrt_runtime_up", "1 while a runtime serves this tenant.")
        up.add_metric([], 1.0 if self._runtime_up() else 0.0)
        yield up
        expiry = GaugeMetricFamily(
            "flowrt_certificate_expiry_seconds",
            "Seconds until the keystore entry's validity ends (negative: expired).",
            labels=["alias"],
        )
        now = dt.datetime.now(dt.UTC)
        try:
            entries = list(Keystore.open(self._tenant))
        except FlowrtError:
            entries = []  # no keystore or no master key here: nothing to report
        for entry in entries:
            expiry.add_metric([entry.alias], (valid_until(entry) - now).total_seconds())
        yield expiry
        if self._from_mpl:
            yield from self._messages()

    def _messages(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "flowrt_messages",
            "MPL entries with a final status, by flow and status (from the MPL).",
            labels=["flow", "status"],
        )
        for (flow, status), count in sorted(self._mpl_counts().items()):
            if MplStatus(status).is_final:
                messages.add_metric([flow, status], count)
        yield messages
        dead = CounterMetricFamily(
            "flowrt_dead_letters", "Messages moved to a dead-letter place after their last attempt."
        )
        dead.add_metric([], self._dead)
        yield dead

    def _mpl_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            if time.monotonic() - self._counted_at >= _MPL_COUNT_TTL:
                store = open_mpl(self._tenant, create=False)
                if store is not None:
                    with store:
                        self._counts = store.counts()
                        self._dead = sum(store.dead_letter_counts().values())
                self._counted_at = time.monotonic()
            return self._counts


class MetricsSource:
    """The ``/metrics`` text. ``in_runtime``: the process counters of the runtime are part
    of it; otherwise message counts come from the MPL."""

    def __init__(self, tenant: Tenant, *, in_runtime: bool, runtime_up: Callable[[], bool]):
        self._in_runtime = in_runtime
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(
            _TenantCollector(tenant, runtime_up=runtime_up, from_mpl=not in_runtime)
        )

    def render(self) -> bytes:
        text = generate_latest(self._registry)
        if self._in_runtime:
            text = generate_latest(process_metrics.REGISTRY) + text
        return text
