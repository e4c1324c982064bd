"""What the notifier costs the runtime, printed as one JSON line per figure.

Figures:

- ``notify_idle_cycle``: one notifier cycle (settings read, MPL read from the watermark, rules
  matched) when nothing new happened, over an MPL of ``--entries`` entries, median of 200
  cycles. Reference in the same run: the query behind ``flowrt mpl list --status FAILED
  --limit 50`` on the same database (what watching "by looking" costs per look).
- ``notify_alert_rate``: alerts/s for ``--failures`` failed messages arriving at once (read
  from the MPL, composed, recorded in the attempt log, handed to a ``send`` that returns at
  once; the limit is raised so that every alert is sent). Reference: the MPL recording of the
  same failures by the engine's recorder.

Usage: ``python benchmarks/notify.py [--entries 100000] [--failures 1000]``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowrt.adapters.mail.smtp.transaction import TransactionResult
from flowrt.errors import ConnectException, MailConnectException
from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore
from flowrt.mpl.ids import new_message_id
from flowrt.notify.config import NotifyServer, edit_config, make_rule, replace
from flowrt.notify.notifier import Notifier
from flowrt.security import TenantSecurity
from flowrt.security.setup import init_tenant
from flowrt.tenant import Tenant


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}))
    sys.stdout.flush()


def record(store: MplStore, count: int, status: MplStatus) -> float:
    error = MailConnectException("Could not connect to SMTP host: smtp.example.com, port: 465;")
    error.__cause__ = ConnectException("Connection refused")
    started = time.perf_counter()
    recorder = MplRecorder(store, level=LogLevel.INFO)
    for _ in range(count):
        message_id = new_message_id()
        entry = recorder.begin(message_id, message_id, "invoice-forward", "1", "in", ["out"])
        entry.start_run()
        if status == MplStatus.COMPLETED:
            entry.complete(status)
        else:
            entry.fail(error, status=status)
    recorder.close()
    return time.perf_counter() - started


async def send(*args: Any) -> TransactionResult:
    return TransactionResult(("ops@example.com",), {}, {}, "250 2.0.0 Ok")


async def idle_cycles(notifier: Notifier, count: int) -> list[float]:
    """Cycles in one event loop, as in the runtime."""
    cycles = []
    for _ in range(count):
        started = time.perf_counter()
        await notifier.run_once()
        cycles.append(time.perf_counter() - started)
    return cycles


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--failures", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tenant"
        init_tenant(root, environ={})
        tenant = Tenant(root)
        with edit_config(tenant) as edit:
            server = NotifyServer("127.0.0.1", 465, "smtps", "flowrt@example.com")
            rule = make_rule("all", "message-failed", ["ops@example.com"])
            edit.value = replace(edit.value, server=server, rules=(rule,), limit=1000)
        store = MplStore(tenant.mpl_path)
        record(store, args.entries, MplStatus.COMPLETED)
        notifier = Notifier(tenant, TenantSecurity.open(tenant), send=send)
        asyncio.run(notifier.run_once())  # the watermark at the end of the log

        cycles = asyncio.run(idle_cycles(notifier, 200))
        looks = []
        for _ in range(200):
            started = time.perf_counter()
            store.list_entries(status=MplStatus.FAILED, limit=50)
            looks.append(time.perf_counter() - started)
        emit(
            "notify_idle_cycle",
            statistics.median(cycles) * 1000,
            "ms",
            entries=args.entries,
            reference_mpl_list_failed_ms=round(statistics.median(looks) * 1000, 3),
        )

        recorded = record(store, args.failures, MplStatus.FAILED)
        started = time.perf_counter()
        asyncio.run(notifier.run_once())
        elapsed = time.perf_counter() - started
        sent = len(notifier.log.attempts(status="sent", limit=args.failures + 1))
        emit(
            "notify_alert_rate",
            sent / elapsed,
            "alerts/s",
            alerts=sent,
            reference_mpl_record_rate=round(args.failures / recorded, 1),
        )
        notifier.close()
        store.close()


if __name__ == "__main__":
    main()
