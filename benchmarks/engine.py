"""Engine overhead per message, printed as one JSON line per figure.

The work: a five-step in-memory flow (``filter``, ``set header``, ``set property``, ``log
debug`` (not recorded at info, and the runtime log at info), ``mpl property``) on 2 KB mails,
pre-built as exchanges, delivered to a receiver that does nothing.

Two references, both measured in the same run:

- ``bare_chain_rate``: messages/s of the same work done by a plain chain of Python functions
  (the same Exchange/Headers operations, the custom property appended to a list), recording
  nothing. The issue's reference: the engine's goal is at least 1/3 of it.
- ``bare_chain_sqlite_rate``: the same chain that also records the same facts the engine
  records at ``info`` (an entry, its run, a start/stop time for each of the five steps and the
  delivery, the custom property) with nothing but the standard library: ``time.time()`` around
  each function, the entry row with its runs as the same JSON (``json.dumps``), and plain
  ``sqlite3`` ``executemany`` of entry and property rows, 1000 messages per transaction, into a
  database with the MPL schema and pragmas. Recording done plainly: no recorder, no buffering,
  no timer thread, no PROCESSING row while a message is under way. (Not a strict lower bound:
  the MPL store's multi-row statements write the same rows somewhat faster than executemany.)

Figures:

- ``bare_chain_with_mpl_rate``: the bare chain plus the same recording through
  :class:`MplRecorder` called by hand: what the MPL API costs, without the engine.
- ``engine_rate``: messages/s through the compiled pipeline and :class:`Runner`, with an
  :class:`MplRecorder` at ``info`` writing to a temporary SQLite MPL; the clock stops when the
  recorder is closed, that is when every entry is written.
- ``engine_rate_mpl_none``: the same with the flow's log-level ``none`` (a minimal MPL entry),
  to show what step recording costs.
- ``engine_vs_bare_ratio``: ``engine_rate / bare_chain_rate`` (the issue's goal: >= 1/3).
- ``engine_vs_bare_sqlite_ratio``: ``engine_rate / bare_chain_sqlite_rate``: the engine
  against the bare chain when both keep the same log.
- ``engine_vs_bare_with_mpl_ratio``: ``engine_rate / bare_chain_with_mpl_rate``: the engine's
  own overhead once both record through the MplRecorder.
- ``engine_cost_per_message``: µs per message in the engine, and in each reference.

Usage: ``python benchmarks/engine.py [--messages 20000] [--rounds 3]``. Best of ``rounds``;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from flowrt.dsl import parse_text
from flowrt.engine.exchange import Exchange, Headers
from flowrt.engine.pipeline import compile_flow
from flowrt.engine.runner import Runner
from flowrt.mpl import _schema
from flowrt.mpl.ids import new_message_id
from flowrt.mpl.recorder import MplRecorder
from flowrt.mpl.store import MplStore

FLOW = """\
flow bench {
    log-level %s
    sender mail {
        protocol   imap
        address    "imap.example.com"
        protection imaps
        auth       plain credential "in"
    }
    pipeline {
        filter       header.Subject matches "(?i)invoice"
        set          header "X-Forwarded-By" = "flowrt"
        set          property "customer" = header.From
        log          debug "forwarding ${header.Subject} from ${property.customer}"
        mpl property "customer" = header.From
    }
    receiver mail accounting {
        address    "smtp.example.com"
        protection smtps
        from       "integration@example.com"
        to         "accounting@example.com"
    }
}
"""

HEADERS = [
    ("Return-Path", "<billing@supplier.example>"),
    ("Received", "from mx1.supplier.example (mx1.supplier.example [192.0.2.10]) by mail.plant"),
    ("Received", "from app.supplier.example by mx1.supplier.example with ESMTPS id 4Vb2"),
    ("DKIM-Signature", "v=1; a=rsa-sha256; d=supplier.example; s=s1; bh=" + "x" * 44),
    ("From", "Supplier Billing <billing@supplier.example>"),
    ("To", "Plant Mailbox <plant@example.com>"),
    ("Subject", "Invoice 2024-118 for order 55012"),
    ("Date", "Tue, 07 May 2024 08:00:00 +0000"),
    ("Message-ID", "<20240507080000.55012@supplier.example>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Transfer-Encoding", "7bit"),
    ("X-Mailer", "Billing 4.2"),
    ("X-Priority", "3"),
]
HEADER_BYTES = sum(len(k) + len(v) + 4 for k, v in HEADERS)
BODY = ("Dear customer, please find the invoice data below. " * 40)[: 2048 - HEADER_BYTES]
SUBJECT = re.compile("(?i)invoice")


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}))
    sys.stdout.flush()


def exchanges(count: int) -> list[Exchange]:
    """Fresh 2 KB exchanges (steps change them, so every run needs its own)."""
    body = BODY.encode()
    return [
        Exchange(body=body, headers=Headers(HEADERS), message_id=new_message_id())
        for _ in range(count)
    ]


def bare_chain(messages: list[Exchange]) -> float:
    """The same work as plain functions: the reference."""
    log = structlog.get_logger("bench").bind(flow="bench")
    custom: list[tuple[str, str, str]] = []
    sent: list[Exchange] = []

    def keep(ex: Exchange) -> bool:
        return SUBJECT.search(ex.headers.get("Subject") or "") is not None

    def set_header(ex: Exchange) -> None:
        ex.headers.set("X-Forwarded-By", "flowrt")

    def set_property(ex: Exchange) -> None:
        ex.properties["customer"] = ex.headers.get("From") or ""

    def log_debug(ex: Exchange) -> None:
        log.debug("forwarding", message_id=ex.message_id)

    def mpl_property(ex: Exchange) -> None:
        custom.append((ex.message_id, "customer", ex.headers.get("From") or ""))

    start = time.perf_counter()
    for ex in messages:
        if not keep(ex):
            continue
        set_header(ex)
        set_property(ex)
        log_debug(ex)
        mpl_property(ex)
        sent.append(ex)
    elapsed = time.perf_counter() - start
    assert len(sent) == len(messages)
    return elapsed


def bare_chain_sqlite(messages: list[Exchange], folder: Path) -> float:
    """The reference plus the same facts written with plain sqlite3 executemany (see the
    module docstring)."""
    log = structlog.get_logger("bench").bind(flow="bench")
    path = folder / f"plain-{new_message_id()}.sqlite"
    MplStore(path).close()  # the MPL schema; WAL stays set in the file
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    columns = _schema.ENTRY_COLUMNS
    insert_entry = (
        f"INSERT INTO entries ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    )
    insert_property = "INSERT INTO properties (message_id, seq, name, value) VALUES (?, ?, ?, ?)"
    sender, receivers = "mail imap imap.example.com:993/INBOX", json.dumps(["mail smtp accounting"])
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    entries: list[tuple[Any, ...]] = []
    props: list[tuple[Any, ...]] = []
    sent: list[Exchange] = []
    now = time.time

    def write() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert_entry, entries)
        conn.executemany(insert_property, props)
        conn.execute("COMMIT")
        entries.clear()
        props.clear()

    def step(name: str, line: str, run_start: float, t0: float, t1: float) -> list[Any]:
        return [
            name,
            line,
            "",
            "COMPLETED",
            int((t0 - run_start) * 1e6),
            int((t1 - t0) * 1e6),
            None,
        ]

    start = time.perf_counter()
    for ex in messages:
        began = t0 = now()
        if SUBJECT.search(ex.headers.get("Subject") or "") is None:
            continue
        t1 = now()
        steps = [step("filter", "10", began, t0, t1)]
        ex.headers.set("X-Forwarded-By", "flowrt")
        t0 = now()
        steps.append(step("set header X-Forwarded-By", "11", began, t1, t0))
        ex.properties["customer"] = ex.headers.get("From") or ""
        t1 = now()
        steps.append(step("set property customer", "12", began, t0, t1))
        log.debug("forwarding", message_id=ex.message_id)
        t0 = now()
        steps.append(step("log debug", "13", began, t1, t0))
        props.append((ex.message_id, 0, "customer", ex.headers.get("From") or ""))
        t1 = now()
        steps.append(step("mpl property customer", "14", began, t0, t1))
        sent.append(ex)
        t0 = now()
        steps.append(step("receiver accounting", "16", began, t1, t0))
        us, end = int(began * 1e6), int(t0 * 1e6)
        entries.append(
            (
                ex.message_id,
                ex.correlation_id,
                None,
                "bench",
                "1",
                sender,
                receivers,
                "COMPLETED",
                began,
                t0,
                "info",
                0,
                None,
                None,
                None,
                None,
                None,
                encode([[1, us, end, "COMPLETED", steps]]),
                "[]",
                ex.headers.get("Subject") or "",
                ex.headers.get("From") or "",
            )
        )
        if len(entries) == 1000:
            write()
    write()
    conn.close()
    elapsed = time.perf_counter() - start
    assert len(sent) == len(messages)
    return elapsed


def bare_chain_with_mpl(messages: list[Exchange], folder: Path) -> float:
    """The reference plus the same MPL recording done by hand (one entry, one run, a step
    record per function and the delivery, the custom property), to tell the engine's own
    overhead from what the MPL costs."""
    log = structlog.get_logger("bench").bind(flow="bench")
    recorder = MplRecorder(MplStore(folder / f"mpl-{new_message_id()}.sqlite"), owns_store=True)
    sent: list[Exchange] = []
    now = time.time
    sender, receivers = "mail imap imap.example.com:993/INBOX", ("mail smtp accounting",)
    start = time.perf_counter()
    for ex in messages:
        entry = recorder.begin(
            ex.message_id, ex.correlation_id, "bench", "1", sender, receivers, start=now()
        )
        run = entry.start_run()
        t0 = now()
        if SUBJECT.search(ex.headers.get("Subject") or "") is None:
            continue
        t1 = now()
        run.step("filter", "10", "", "COMPLETED", t0, t1)
        ex.headers.set("X-Forwarded-By", "flowrt")
        t0 = now()
        run.step("set header X-Forwarded-By", "11", "", "COMPLETED", t1, t0)
        ex.properties["customer"] = ex.headers.get("From") or ""
        t1 = now()
        run.step("set property customer", "12", "", "COMPLETED", t0, t1)
        log.debug("forwarding", message_id=ex.message_id)
        t0 = now()
        run.step("log debug", "13", "", "COMPLETED", t1, t0)
        entry.custom_property("customer", ex.headers.get("From") or "")
        t1 = now()
        run.step("mpl property customer", "14", "", "COMPLETED", t0, t1)
        sent.append(ex)
        t0 = now()
        run.step("receiver accounting", "16", "", "COMPLETED", t1, t0)
        entry.complete("COMPLETED", end=t0)
    recorder.close()
    elapsed = time.perf_counter() - start
    assert len(sent) == len(messages)
    return elapsed


def engine(messages: list[Exchange], level: str, folder: Path) -> float:
    result = parse_text(FLOW % level, "bench.flow")
    assert result.ok, result.render()
    pipeline = compile_flow(result.flows[0], folder=folder)
    recorder = MplRecorder(MplStore(folder / f"mpl-{new_message_id()}.sqlite"), owns_store=True)
    sent: list[Exchange] = []

    async def deliver(name: str, ex: Exchange) -> None:
        sent.append(ex)

    runner = Runner(pipeline, recorder, deliver, version="1")

    async def run_all() -> None:
        for ex in messages:
            await runner.process(ex)

    start = time.perf_counter()
    asyncio.run(run_all())
    recorder.close()
    elapsed = time.perf_counter() - start
    assert len(sent) == len(messages)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # The runtime's logging as deployed: info and above, debug calls are no-ops.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="flowrt-bench-") as tmp:
        folder = Path(tmp)
        engine(exchanges(1000), "info", folder)  # warm up imports and caches
        bare = min(bare_chain(exchanges(n)) for _ in range(args.rounds))
        bare_sqlite = min(bare_chain_sqlite(exchanges(n), folder) for _ in range(args.rounds))
        bare_mpl = min(bare_chain_with_mpl(exchanges(n), folder) for _ in range(args.rounds))
        info = min(engine(exchanges(n), "info", folder) for _ in range(args.rounds))
        none = min(engine(exchanges(n), "none", folder) for _ in range(args.rounds))
    size = HEADER_BYTES + len(BODY)
    common = {"messages": n, "mail_bytes": size, "steps": 5}
    emit("bare_chain_rate", n / bare, "messages/s", **common)
    emit("bare_chain_sqlite_rate", n / bare_sqlite, "messages/s", mpl_level="info", **common)
    emit("bare_chain_with_mpl_rate", n / bare_mpl, "messages/s", mpl_level="info", **common)
    emit("engine_rate", n / info, "messages/s", mpl_level="info", **common)
    emit("engine_rate_mpl_none", n / none, "messages/s", mpl_level="none", **common)
    emit("engine_vs_bare_ratio", bare / info, "ratio", goal=">= 0.333")
    emit("engine_vs_bare_sqlite_ratio", bare_sqlite / info, "ratio")
    emit("engine_vs_bare_with_mpl_ratio", bare_mpl / info, "ratio")
    emit(
        "engine_cost_per_message",
        info / n * 1e6,
        "µs",
        bare_chain_us=round(bare / n * 1e6, 3),
        bare_chain_sqlite_us=round(bare_sqlite / n * 1e6, 3),
        bare_chain_with_mpl_us=round(bare_mpl / n * 1e6, 3),
        mpl_none_us=round(none / n * 1e6, 3),
    )


if __name__ == "__main__":
    main()
