"""The web monitor at 10^6 MPL entries, printed as one JSON line per figure.

A tenant's MPL is filled with ``--entries`` synthetic entries (the generator of
``benchmarks/mpl.py``: 30 days, 2 % FAILED, three flows), then ``flowrt monitor`` serves it on
loopback and an HTTP client asks, each ``--repeat`` times (median ms, first request apart):

- ``monitor_api_first_page``: ``GET /api/messages`` (50 newest entries as JSON);
- ``monitor_api_filtered_page``: ``GET /api/messages?status=FAILED&flow=orders``;
- ``monitor_api_deep_page``: the 20th page of the filtered list, reached by its cursor;
- ``monitor_list_page`` / ``monitor_list_filtered_page``: the HTML list pages.

References in the same run, on the same store: ``flowrt mpl list [--status FAILED --flow
orders] --format json`` as a process (what an operator types; includes Python's start), and
the store's own list query in-process (what both share).

Usage: ``python benchmarks/monitor.py [--entries 1000000] [--repeat 21]``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mpl import synthetic_rows  # noqa: E402  (the sibling benchmark's generator)

from flowrt.mpl import MplStatus, MplStore  # noqa: E402
from flowrt.tenant import Tenant  # noqa: E402

FILTER = {"status": "FAILED", "flow": "orders"}


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}))
    sys.stdout.flush()


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(first, median of the rest) in ms."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times[1:])


def flowrt(tenant: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["flowrt", "--tenant", str(tenant), *args], check=True, capture_output=True
    )


def build(tenant: Path, entries: int) -> None:
    flowrt(tenant, "init")
    started = time.perf_counter()
    with MplStore(Tenant(tenant).mpl_path) as store:
        for batch, props in synthetic_rows(entries, random.Random(7)):
            store.write_batch(batch, props)
    emit("monitor_bench_build", time.perf_counter() - started, "s", entries=entries)


def serve(tenant: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    log = tenant.parent / "monitor.log"
    handle = log.open("w")
    proc = subprocess.Popen(
        ["flowrt", "--tenant", str(tenant), "monitor", "--http", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=handle,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"(http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return proc, found.group(1), log
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"the monitor did not start: {log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    repeat = args.repeat
    with tempfile.TemporaryDirectory(prefix="flowrt-monitor-bench-") as tmp:
        tenant = Path(tmp) / "tenant"
        build(tenant, args.entries)
        proc, url, _ = serve(tenant)
        try:
            with httpx.Client(base_url=url, timeout=30) as client:

                def get(path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
                    response = client.get(path, params=params)
                    response.raise_for_status()
                    return response.json() if path.startswith("/api") else {}

                # the cursor of the 19th filtered page, so the 20th is what is timed
                params = dict(FILTER)
                for _ in range(19):
                    params["after"] = get("/api/messages", params)["next"]
                deep = dict(params)
                rows = len(get("/api/messages", deep)["messages"])

                cli_first = timed(lambda: flowrt(tenant, "mpl", "list", "--format", "json"), 5)
                cli_filtered = timed(
                    lambda: flowrt(
                        tenant,
                        "mpl",
                        "list",
                        "--status",
                        "FAILED",
                        "--flow",
                        "orders",
                        "--format",
                        "json",
                    ),
                    5,
                )
                with MplStore(Tenant(tenant).mpl_path) as store:
                    query_first = timed(lambda: store.list_entries(limit=50), repeat)
                    query_filtered = timed(
                        lambda: store.list_entries(
                            status=MplStatus.FAILED, flow="orders", limit=50
                        ),
                        repeat,
                    )
                cases = [
                    ("monitor_api_first_page", "/api/messages", None, cli_first, query_first),
                    (
                        "monitor_api_filtered_page",
                        "/api/messages",
                        FILTER,
                        cli_filtered,
                        query_filtered,
                    ),
                    ("monitor_api_deep_page", "/api/messages", deep, None, None),
                    ("monitor_list_page", "/messages", None, cli_first, query_first),
                    (
                        "monitor_list_filtered_page",
                        "/messages",
                        FILTER,
                        cli_filtered,
                        query_filtered,
                    ),
                ]
                for figure, path, query, cli, store_query in cases:
                    first, median = timed(lambda p=path, q=query: get(p, q), repeat)  # type: ignore[misc]
                    extra: dict[str, Any] = {"entries": args.entries, "first_ms": round(first, 2)}
                    if figure == "monitor_api_deep_page":
                        extra["page"] = 20
                        extra["rows"] = rows
                    if cli is not None and store_query is not None:
                        extra["reference"] = "flowrt mpl list (process)"
                        extra["reference_ms"] = round(cli[1], 1)
                        extra["store_query_ms"] = round(store_query[1], 3)
                    emit(figure, median, "ms", **extra)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
