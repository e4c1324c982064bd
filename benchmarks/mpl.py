"""MPL write and query cost, printed as one JSON line per figure.

Figures:

- ``mpl_insert_rate``: messages/s through :class:`MplRecorder` at ``info`` (an entry, one run,
  five steps each; time-ordered IDs), from the first ``begin`` to ``close`` (all rows written).
  Reference in the same run: ``plain_executemany``, a bare ``sqlite3`` ``executemany`` of the
  very same rows (read back from the recorder's database) into a fresh database with the same
  schema, 1000 rows per transaction.
- ``mpl_insert_rate_uuid4``: the same with random (uuid4) message IDs, showing why the engine
  should use :func:`flowrt.mpl.ids.new_message_id`.
- ``mpl_record_call_cost`` / ``mpl_flush_cost``: the insert cost split into the engine-side calls
  and the batched write, in µs per message.
- ``mpl_bulk_load_rate``: how fast the 10^6-entry database for the query figures was built.
- ``mpl_list_failed_latency``: the query behind ``flowrt mpl list --status FAILED --limit 50``
  over ``--entries`` stored entries (p50 of repeated runs; ``first_ms`` is the first run on a
  new connection). Reference: the same query forced to scan the table (``NOT INDEXED``).
- ``mpl_list_latency``, ``mpl_list_property_latency``, ``mpl_show_latency``: ``mpl list`` without
  filters, with ``--property``, and ``mpl show ID``.

Usage: ``python benchmarks/mpl.py [--entries 1000000] [--inserts 200000]``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore, StepStatus, _schema
from flowrt.mpl.ids import new_message_id

SENDER = "mail imap plant@mail.plant.example:143/INBOX"
RECEIVERS = ("mail smtp accounting@smtp.example.com:465",)
STEPS = [(f"step{i + 1}", str(10 + i)) for i in range(5)]


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}))
    sys.stdout.flush()


def record_messages(rec: MplRecorder, ids: list[str]) -> None:
    """What the engine does per message for a five-step flow at info."""
    for message_id in ids:
        entry = rec.begin(message_id, message_id, "invoice-forward", "3", SENDER, RECEIVERS)
        run = entry.start_run()
        for step_id, line in STEPS:
            t = time.time()
            run.step(step_id, line, "", StepStatus.COMPLETED, t, t)
        run.finish(MplStatus.COMPLETED)
        entry.complete(MplStatus.COMPLETED)


def insert_rate(path: Path, ids: list[str]) -> float:
    store = MplStore(path)
    started = time.perf_counter()
    with MplRecorder(store, level=LogLevel.INFO) as rec:
        record_messages(rec, ids)
    elapsed = time.perf_counter() - started
    store.close()
    return len(ids) / elapsed


def split_cost(path: Path, ids: list[str], batch: int = 1000) -> tuple[float, float]:
    """µs per message for the engine-side calls and for the batched write, measured apart:
    ``batch`` messages are recorded with nothing written, then flushed, and so on."""
    store = MplStore(path)
    rec = MplRecorder(store, batch_size=10**9, flush_interval=3600, max_pending=10**9)
    calls = flush = 0.0
    for i in range(0, len(ids), batch):
        started = time.perf_counter()
        record_messages(rec, ids[i : i + batch])
        flushing = time.perf_counter()
        rec.flush()
        calls += flushing - started
        flush += time.perf_counter() - flushing
    rec.close()
    store.close()
    return calls / len(ids) * 1e6, flush / len(ids) * 1e6


def plain_executemany_rate(source: Path, target: Path) -> float:
    """The reference: the same entry rows, written with a bare executemany."""
    with sqlite3.connect(source) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(_schema.ENTRY_COLUMNS)} FROM entries ORDER BY id"
        ).fetchall()
    MplStore(target).close()  # same schema, same pragmas
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    sql = (
        f"INSERT INTO entries ({', '.join(_schema.ENTRY_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(_schema.ENTRY_COLUMNS))})"
    )
    started = time.perf_counter()
    for i in range(0, len(rows), 1000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[i : i + 1000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def _uuid7_at(millis: int, rng: random.Random) -> str:
    rand = rng.getrandbits(74)
    value = millis << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def synthetic_rows(
    count: int, rng: random.Random
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Entries over the last 30 days: 2 % FAILED, 1 % RETRY, three flows, a property on 10 %."""
    now = time.time()
    start = now - 30 * 86400
    step = (now - start) / count
    runs = json.dumps(
        [[1, 0, 10000, "COMPLETED", [[s, n, "", "COMPLETED", 0, 50, None] for s, n in STEPS]]],
        separators=(",", ":"),
    )
    chain = (
        "MailConnectException: Could not connect to SMTP host: smtp.example.com, port: 465;\n"
        "  nested exception is:\n\tConnectException: Connection refused"
    )
    levels = json.dumps([["MailConnectException", "Could not connect"], ["ConnectException", "x"]])
    flows = ("invoice-forward", "orders", "notifications")
    entries: list[tuple[Any, ...]] = []
    props: list[tuple[Any, ...]] = []
    for i in range(count):
        t = start + i * step
        message_id = _uuid7_at(int(t * 1000), rng)
        roll = rng.random()
        status = "FAILED" if roll < 0.02 else "RETRY" if roll < 0.03 else "COMPLETED"
        failed = status == "FAILED"
        entries.append(
            (
                message_id,
                message_id,
                None,
                flows[i % 3],
                "3",
                SENDER,
                json.dumps(RECEIVERS),
                status,
                t,
                None if status == "RETRY" else t + 0.01,
                "info",
                0,
                None,
                chain if failed else None,
                levels if failed else None,
                "check the server" if failed else None,
                "step4" if failed else None,
                runs,
                "[]",
                "Invoice 2026-0815",
                "billing@supplier.example",
            )
        )
        if i % 10 == 0:
            props.append((message_id, 0, "customer", f"customer-{i % 1000}"))
        if len(entries) == 20000:
            yield entries, props
            entries, props = [], []
    if entries:
        yield entries, props


def latency(fn: Callable[[], object], repeat: int = 21) -> tuple[float, float]:
    """(first run, p50 of the rest) in ms."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times[1:])


def query_figures(path: Path, entries: int) -> None:
    rng = random.Random(7)
    store = MplStore(path)
    started = time.perf_counter()
    for batch, props in synthetic_rows(entries, rng):
        store.write_batch(batch, props)
    build = time.perf_counter() - started
    store.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    emit(
        "mpl_bulk_load_rate",
        entries / build,
        "entries/s",
        entries=entries,
        seconds=round(build, 1),
        db_bytes_per_entry=round(size / entries),
    )

    store = MplStore(path)  # a new connection: its page cache starts empty
    first, p50 = latency(lambda: store.list_entries(status=MplStatus.FAILED, limit=50))
    failed = len(store.list_entries(status=MplStatus.FAILED, limit=50))
    scan_sql = (
        "SELECT message_id FROM entries NOT INDEXED WHERE status = 'FAILED' "
        "ORDER BY log_start DESC, id DESC LIMIT 50"
    )
    _, scan = latency(lambda: store._conn.execute(scan_sql).fetchall(), repeat=4)
    emit(
        "mpl_list_failed_latency",
        p50,
        "ms",
        entries=entries,
        rows=failed,
        first_ms=round(first, 3),
        reference="table scan (NOT INDEXED)",
        reference_ms=round(scan, 1),
        query="flowrt mpl list --status FAILED --limit 50",
    )
    first, p50 = latency(lambda: store.list_entries(limit=50))
    emit("mpl_list_latency", p50, "ms", entries=entries, first_ms=round(first, 3))
    first, p50 = latency(
        lambda: store.list_entries(properties=[("customer", "customer-500")], limit=50)
    )
    emit("mpl_list_property_latency", p50, "ms", entries=entries, first_ms=round(first, 3))
    some_id = store.list_entries(status=MplStatus.FAILED, limit=1)[0].message_id
    first, p50 = latency(lambda: store.get(some_id))
    emit("mpl_show_latency", p50, "ms", entries=entries, first_ms=round(first, 3))
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries for queries")
    parser.add_argument("--inserts", type=int, default=200_000, help="messages for insert rate")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flowrt-mpl-bench-") as tmp:
        root = Path(tmp)
        ids = [new_message_id() for _ in range(args.inserts)]
        rate = insert_rate(root / "rec.sqlite", ids)
        reference = plain_executemany_rate(root / "rec.sqlite", root / "plain.sqlite")
        emit(
            "mpl_insert_rate",
            rate,
            "messages/s",
            messages=args.inserts,
            level="info",
            steps=5,
            reference="plain_executemany",
            reference_value=round(reference),
            ratio=round(rate / reference, 3),
        )
        random_ids = [str(uuid.uuid4()) for _ in range(args.inserts)]
        emit(
            "mpl_insert_rate_uuid4",
            insert_rate(root / "rec4.sqlite", random_ids),
            "messages/s",
            messages=args.inserts,
        )
        calls, flush = split_cost(root / "split.sqlite", [new_message_id() for _ in ids])
        emit("mpl_record_call_cost", calls, "us/message", messages=args.inserts)
        emit("mpl_flush_cost", flush, "us/message", messages=args.inserts)
        for name in os.listdir(root):
            os.unlink(root / name)
        query_figures(root / "query.sqlite", args.entries)


if __name__ == "__main__":
    main()
