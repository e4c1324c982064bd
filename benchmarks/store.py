"""The store backends compared, one JSON line per figure: SQLite (embedded) vs PostgreSQL 15
(a private server started here, as in the tests), and several runtime nodes on PostgreSQL.

Figures (each backend measured in the same run, so each is the other's reference):

- ``mpl_insert_rate``: messages/s through the MPL recorder at ``info`` (an entry, one run, five
  steps), ``--inserts`` messages, first ``begin`` to ``close``.
- ``mpl_list_failed_latency``: ``mpl list --status FAILED --limit 50`` over ``--entries``
  stored entries (2 % FAILED), median of 30 runs; ``mpl_bulk_load_rate`` is how fast that
  log was written (``write_batch`` of 5,000 rows).
- ``e2e_rate``: mails/s from three Dovecot mailboxes through three deployed flows to Postfix'
  ``smtp-sink``, with one `flowrt run --node` and with two (``--mails`` per mailbox).
- ``takeover``: seconds from the death of the node holding an IDLE flow's mailbox until the
  other node holds it, median of ``--takeovers``: after kill -9 (the dead process is seen on
  this host) and after SIGSTOP (what a node on another machine looks like: its lease must
  expire; ``--lease``).

Usage: ``python benchmarks/store.py [--entries 1000000] [--inserts 100000] [--mails 300]
[--takeovers 5]``. Needs the Debian postgresql, dovecot and postfix packages (as the tests).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.servers and benchmarks.mpl

from benchmarks.mpl import record_messages, synthetic_rows  # noqa: E402
from flowrt.mpl import LogLevel, MplRecorder  # noqa: E402
from flowrt.mpl.ids import new_message_id  # noqa: E402
from flowrt.mpl.store import MplStore  # noqa: E402
from flowrt.store.api import MplBackend  # noqa: E402
from flowrt.store.config import StoreConfig  # noqa: E402
from flowrt.store.pg.connect import PgDatabase  # noqa: E402
from flowrt.store.pg.mpl import PgMplStore  # noqa: E402
from flowrt.store.pg.schema import migrate  # noqa: E402
from tests.servers import DovecotServer, MailboxUser, SmtpSink  # noqa: E402
from tests.servers.postgres import PostgresServer  # noqa: E402


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit, **extra}))
    sys.stdout.flush()


# ----------------------------------------------------------------------------- the MPL


def pg_store(server: PostgresServer, name: str) -> PgMplStore:
    config = StoreConfig(url=server.create_database(name), tenant_id=uuid.uuid4().hex)
    db = PgDatabase(config, check=False, max_size=2)
    with db.direct() as conn:
        migrate(conn, config)
    return PgMplStore(db)


def insert_rate(store: MplBackend, count: int) -> float:
    ids = [new_message_id() for _ in range(count)]
    started = time.perf_counter()
    with MplRecorder(store, level=LogLevel.INFO) as rec:
        record_messages(rec, ids)
    return count / (time.perf_counter() - started)


def bulk_load(store: MplBackend, count: int) -> float:
    rng = random.Random(7)
    started = time.perf_counter()
    written = 0
    for entries, props in synthetic_rows(count, rng):
        store.write_batch(entries, props)
        written += len(entries)
    return written / (time.perf_counter() - started)


def list_failed_ms(store: MplBackend, runs: int = 30) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        found = store.list_entries(status="FAILED", limit=50)
        times.append((time.perf_counter() - started) * 1000)
        assert len(found) == 50
    return statistics.median(times)


def mpl_figures(server: PostgresServer, opts: argparse.Namespace, work: Path) -> None:
    backends: dict[str, Callable[[str], MplBackend]] = {
        "sqlite": lambda name: MplStore(work / f"{name}.sqlite"),
        "postgresql": lambda name: pg_store(server, name),
    }
    for backend, make in backends.items():
        with make("inserts") as store:
            emit(
                "mpl_insert_rate",
                insert_rate(store, opts.inserts),
                "messages/s",
                backend=backend,
                messages=opts.inserts,
            )
        with make("listing") as store:
            emit(
                "mpl_bulk_load_rate",
                bulk_load(store, opts.entries),
                "entries/s",
                backend=backend,
                entries=opts.entries,
            )
            if isinstance(store, PgMplStore):
                with store.db.connection() as conn:
                    conn.execute("ANALYZE")
            emit(
                "mpl_list_failed_latency",
                list_failed_ms(store),
                "ms",
                backend=backend,
                entries=opts.entries,
            )


# ----------------------------------------------------------------------------- nodes

FLOW = """flow {name} {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    off
        auth          plain credential "{name}"
        allow-plaintext-auth yes
        post-process  mark-read
        max-messages  100
        poll          {poll}
    }}
    pipeline {{
        set header "X-Flow" = "{name}"
    }}
    receiver mail out {{
        address       "127.0.0.1:{smtp}"
        protection    off
        auth          none
        from          "flowrt@example.com"
        to            "sink@example.com"
        subject       "Fwd: ${{header.Subject}}"
    }}
}}
"""


def cli(tenant: Path, *args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        ["flowrt", "--tenant", str(tenant), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flowrt {' '.join(args)}: {done.stdout}{done.stderr}")


class Cluster:
    """A PostgreSQL tenant with flows deployed, and its nodes."""

    def __init__(self, server: PostgresServer, work: Path, name: str) -> None:
        self.tenant = work / name
        cli(self.tenant, "init", "--store", server.create_database(name))
        self.nodes: list[subprocess.Popen[bytes]] = []

    def deploy(self, dovecot: DovecotServer, user: MailboxUser, name: str, **values: Any) -> None:
        cli(
            self.tenant,
            "credentials",
            "add",
            name,
            "--user",
            user.address,
            "--password-stdin",
            stdin=user.password,
        )
        path = self.tenant.parent / f"{name}.flow"
        path.write_text(FLOW.format(name=name, imap=dovecot.imap_port, **values))
        cli(self.tenant, "deploy", str(path), "--wait", "0s")

    def start(self, name: str, lease: str = "5s") -> subprocess.Popen[bytes]:
        node = subprocess.Popen(
            [
                "flowrt",
                "--tenant",
                str(self.tenant),
                "run",
                "--node",
                name,
                "--lease",
                lease,
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.nodes.append(node)
        return node

    def holder(self) -> str | None:
        done = subprocess.run(
            ["flowrt", "--tenant", str(self.tenant), "locks", "list", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        held = [lock for lock in json.loads(done.stdout or "[]") if lock["state"] == "held"]
        return held[0]["owner"].split("/")[0] if held else None

    def stop(self) -> None:
        for node in self.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGCONT)
                node.terminate()
                try:
                    node.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait()
        self.nodes.clear()


def fill(dovecot: DovecotServer, user: MailboxUser, count: int) -> None:
    with dovecot.imap(user.address, password=user.password) as client:
        for i in range(count):
            raw = (
                f"From: a@example.com\r\nTo: b@example.com\r\nSubject: mail {i}\r\n"
                f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\n\r\n" + "x" * 2000 + "\r\n"
            )
            client.append("INBOX", None, None, raw.encode())


def e2e_rate(
    server: PostgresServer,
    dovecot: DovecotServer,
    sink: SmtpSink,
    work: Path,
    nodes: int,
    mails: int,
) -> float:
    cluster = Cluster(server, work, f"e2e{nodes}")
    try:
        before = sink.message_count()
        for i in range(3):
            user = dovecot.new_user(f"e2e{nodes}x{i}")
            fill(dovecot, user, mails)
            cluster.deploy(dovecot, user, f"box{i}", smtp=sink.port, poll="every 1s")
        started = time.perf_counter()
        for n in range(nodes):
            cluster.start(f"node{n}")
        sink.wait_messages(before + 3 * mails, timeout=600)
        return 3 * mails / (time.perf_counter() - started)
    finally:
        cluster.stop()


def takeover_seconds(
    server: PostgresServer,
    dovecot: DovecotServer,
    sink: SmtpSink,
    work: Path,
    runs: int,
    how: signal.Signals,
    lease: str,
) -> list[float]:
    cluster = Cluster(server, work, f"takeover{how.name.lower()}")
    user = dovecot.new_user(f"idle{how.name.lower()}")
    cluster.deploy(dovecot, user, "idle", smtp=sink.port, poll="idle")
    times = []
    try:
        nodes = {name: cluster.start(name, lease) for name in ("node-a", "node-b")}
        for _ in range(runs):
            deadline = time.monotonic() + 60
            while (holder := cluster.holder()) is None:
                assert time.monotonic() < deadline, "nobody took the mailbox"
                time.sleep(0.05)
            victim = nodes[holder]
            victim.send_signal(how)
            died = time.perf_counter()
            if how is signal.SIGKILL:
                victim.wait()
            while cluster.holder() in (holder, None):
                assert time.monotonic() < deadline + 60, "no takeover"
                time.sleep(0.02)
            times.append(time.perf_counter() - died)
            if how is signal.SIGSTOP:
                victim.send_signal(signal.SIGCONT)
            else:
                nodes[holder] = cluster.start(holder, lease)
            time.sleep(1.0)  # the new or resumed node settles before the next round
    finally:
        cluster.stop()
    return times


def node_figures(server: PostgresServer, opts: argparse.Namespace, work: Path) -> None:
    with DovecotServer(tls=False, users={}) as dovecot:
        sink = SmtpSink().start()
        try:
            for nodes in (1, 2):
                rate = e2e_rate(server, dovecot, sink, work, nodes, opts.mails)
                emit("e2e_rate", rate, "mails/s", nodes=nodes, mailboxes=3, mails=3 * opts.mails)
            for how in (signal.SIGKILL, signal.SIGSTOP):
                times = takeover_seconds(
                    server, dovecot, sink, work, opts.takeovers, how, opts.lease
                )
                emit(
                    "takeover",
                    statistics.median(times),
                    "s",
                    after=how.name,
                    lease=opts.lease,
                    runs=[round(t, 2) for t in times],
                )
        finally:
            sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--inserts", type=int, default=100_000)
    parser.add_argument("--mails", type=int, default=300, help="per mailbox (three)")
    parser.add_argument("--takeovers", type=int, default=5)
    parser.add_argument("--lease", default="5s")
    parser.add_argument("--skip-nodes", action="store_true")
    opts = parser.parse_args()
    server = PostgresServer().start()
    os.environ["PGPASSFILE"] = str(server.passfile)
    try:
        with tempfile.TemporaryDirectory(prefix="flowrt-bench-store-") as folder:
            mpl_figures(server, opts, Path(folder))
            if not opts.skip_nodes:
                node_figures(server, opts, Path(folder))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
