"""Several `flowrt run --node` processes on one PostgreSQL store, with the real mail servers:
Dovecot mailboxes -> deployed flows -> Postfix -> a Dovecot target mailbox.

A script step (``slow.py``, bundled with the flows) makes the mail with the subject ``slow ...``
take a while and leaves a marker file named after the process handling it, so that a test
can kill or pause exactly the node that is in the middle of a batch.
"""

from __future__ import annotations

import collections
import email
import email.policy
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from starlette.testclient import TestClient

from flowrt.cli.main import cli
from flowrt.monitor.app import MonitorConfig, create_app
from flowrt.store import open_mpl
from flowrt.tenant import Tenant
from tests.proc import alive
from tests.servers import DovecotServer, MailboxUser, PostfixServer
from tests.servers.postgres import PostgresServer

pytestmark = pytest.mark.servers

SLOW = """
import os, pathlib, time

def maybe_sleep(exchange):
    exchange.headers.set("X-Handled-By", str(os.getpid()))
    subject = exchange.headers.get("Subject") or ""
    if subject.startswith("slow"):
        marker = pathlib.Path(os.environ["FLOWRT_TEST_MARKERS"]) / str(os.getpid())
        marker.write_text(subject)
        time.sleep(float(os.environ.get("SLOW_SECONDS", "2")))
"""

FLOW = """flow {name} {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "{credential}"
        post-process  mark-read
        max-messages  50
        in-flight     {in_flight}
        workers       {workers}
        poll          every 1s
        timeout       10s
    }}
    pipeline {{
        script "slow:maybe_sleep"
    }}
    receiver mail out {{
        address       "127.0.0.1:{smtps}"
        protection    smtps
        auth          encrypted credential "smtp-out"
        from          "flowrt@example.com"
        to            "{target}"
        subject       "${{header.Subject}}"
        timeout       10s
    }}
{on_error}}}
"""


def flowrt(tenant: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Node:
    def __init__(
        self, tenant: Path, name: str, lease: str, env: dict[str, str], args: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.home = tenant
        self.log = tenant.parent / f"node-{name}-{time.monotonic_ns()}.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                "flowrt",
                "--tenant",
                str(tenant),
                "run",
                "--node",
                name,
                "--lease",
                lease,
                "--log-format",
                "json",
                "--grace",
                "5s",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "FLOWRT_TEST_MARKERS": str(tenant.parent / "flows" / "markers"),
                **env,
            },
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with_signal(self.proc, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def with_signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


@pytest.fixture
def cluster(
    tmp_path: Path,
    postgres: PostgresServer,
    pg_passfile: Path,
    new_database: Callable[[], str],
    test_ca: Any,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
) -> Iterator[dict[str, Any]]:
    tenant = tmp_path / "tenant"
    created = flowrt(tenant, "init", "--store", new_database())
    assert created.exit_code == 0, created.output
    ca = tmp_path / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    assert flowrt(tenant, "keystore", "add", "test-root", str(ca)).exit_code == 0
    smtp = MailboxUser("accounting@example.com", dovecot.password("accounting@example.com"))
    add_credential(tenant, "smtp-out", smtp)
    flows = tmp_path / "flows"
    (flows / "markers").mkdir(parents=True)
    (flows / "slow.py").write_text(SLOW)
    nodes: list[Node] = []
    target = new_mailbox_user(prefix="dst")

    def start(
        name: str,
        lease: str = "4s",
        args: tuple[str, ...] = (),
        copy: bool = False,
        home: Path | None = None,
        **env: str,
    ) -> Node:
        """``copy``: on its own copy of the tenant directory, as on another machine (or on
        ``home``, such a copy made before)."""
        if copy:
            home = tenant.parent / f"tenant-{name}"
            shutil.copytree(tenant, home)
        node = Node(home or tenant, name, lease, env, args)
        nodes.append(node)
        wait_for(lambda: running(tenant, name), 20, f"node {name} to start")
        return node

    def deploy(
        name: str, to: str = "", on_error: str = "", in_flight: int = 8, workers: int = 1
    ) -> MailboxUser:
        source = new_mailbox_user(prefix="src")
        add_credential(tenant, f"src-{name}", source)
        path = flows / f"{name}.flow"
        path.write_text(
            FLOW.format(
                name=name,
                imap=dovecot.imap_port,
                smtps=postfix.smtps_port,
                credential=f"src-{name}",
                target=to or target.address,
                on_error=on_error,
                in_flight=in_flight,
                workers=workers,
            )
        )
        result = flowrt(tenant, "deploy", str(path), "--wait", "0s")
        assert result.exit_code == 0, result.output
        return source

    yield {"tenant": tenant, "start": start, "deploy": deploy, "target": target, "flows": flows}
    for node in nodes:
        node.stop()


def add_credential(tenant: Path, name: str, user: MailboxUser) -> None:
    result = flowrt(
        tenant,
        "credentials",
        "add",
        name,
        "--user",
        user.address,
        "--password-stdin",
        input=user.password,
    )
    assert result.exit_code == 0, result.output


def status(tenant: Path) -> dict[str, Any]:
    result = flowrt(tenant, "status", "--format", "json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


def running(tenant: Path, name: str) -> bool:
    return any(n["node"] == name and n["state"] == "running" for n in status(tenant)["nodes"])


def mail(subject: str) -> bytes:
    message = email.message.EmailMessage()
    message["From"] = "billing@supplier.example"
    message["To"] = "plant@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<{time.monotonic_ns()}.{subject.replace(' ', '-')}@supplier.example>"
    message.set_content(f"body of {subject}")
    return message.as_bytes(policy=email.policy.SMTP)


def arrived(dovecot: DovecotServer, user: MailboxUser) -> collections.Counter[str]:
    return collections.Counter(subject for subject, _pid in delivered(dovecot, user))


def delivered(dovecot: DovecotServer, user: MailboxUser) -> list[tuple[str, int]]:
    """(subject, pid of the node that sent it) of each mail in the target mailbox."""
    found = []
    for _uid, _flags, raw in dovecot.messages(user.address, "INBOX"):
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        found.append((str(parsed["Subject"]), int(str(parsed["X-Handled-By"]))))
    return found


def all_seen(dovecot: DovecotServer, user: MailboxUser) -> bool:
    return all("\\Seen" in flags for _u, flags, _r in dovecot.messages(user.address, "INBOX"))


def completed(tenant: Path) -> collections.Counter[str]:
    result = flowrt(
        tenant, "mpl", "list", "--status", "COMPLETED", "--limit", "100000", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    return collections.Counter(e["correlation_id"] for e in json.loads(result.output))


def listed(tenant: Path, status: str) -> list[dict[str, Any]]:
    result = flowrt(
        tenant, "mpl", "list", "--status", status, "--limit", "100000", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    found: list[dict[str, Any]] = json.loads(result.output)
    return found


def marker_pid(flows: Path) -> int | None:
    markers = list((flows / "markers").iterdir())
    return int(markers[0].name) if markers else None


MAILS = 500
"""Mails of the kill -9 test, over three mailboxes, as the issue asks: ~35 s on the shared
2-core machine (60 took ~10 s), all of it bounded by the waits below."""


def test_kill_9_of_the_node_mid_batch_another_takes_over(
    cluster: dict[str, Any], dovecot: DovecotServer
) -> None:
    failover(cluster, dovecot, MAILS)


def failover(cluster: dict[str, Any], dovecot: DovecotServer, count: int) -> dict[str, Any]:
    """Two nodes, ``count`` mails in three mailboxes, kill -9 of the node that is in the
    middle of a (slow) mail: asserts what the issue asks, returns what it measured."""
    tenant, target, flows = cluster["tenant"], cluster["target"], cluster["flows"]
    sources = [cluster["deploy"](f"box{i}") for i in range(3)]
    subjects = []
    for n in range(count):
        i, j = n % 3, n // 3
        subject = f"slow {i}-{j}" if (i, j) == (0, 5) else f"mail {i}-{j}"
        dovecot.append(sources[i].address, "INBOX", mail(subject))
        subjects.append(subject)
    budget = 50 + count / 5  # seconds for every mail to arrive (bounded, generous)
    a = cluster["start"]("node-a")
    b = cluster["start"]("node-b")
    wait_for(lambda: marker_pid(flows) is not None, 40, "a node to reach the slow mail")
    holder = marker_pid(flows)
    victim, survivor = (a, b) if holder == a.proc.pid else (b, a)
    assert holder == victim.proc.pid
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()

    killed_at = time.monotonic()
    wait_for(lambda: sum(arrived(dovecot, target).values()) >= len(subjects), budget, "all mails")
    all_in = time.monotonic() - killed_at
    got = arrived(dovecot, target)
    assert set(got) == set(subjects), "0 lost"
    # A mail is sent twice only when the kill fell between the SMTP server's "250 accepted"
    # and the killed node's idempotency record: then the killed node's copy exists and it
    # never finished the mail (no COMPLETED entry of its own), at most one per flow it ran.
    # The slow step blocks the killed node's event loop, which widens exactly that window
    # for the flows it ran beside the slow mail; the slow mail itself is sent once.
    twice = {s for s, n in got.items() if n > 1}
    assert max(got.values()) <= 2 and len(twice) <= 2 and "slow 0-5" not in twice
    senders = collections.defaultdict(list)
    for subject, pid in delivered(dovecot, target):
        senders[subject].append(pid)
    for subject in twice:
        assert sorted(senders[subject]) == sorted([victim.proc.pid, survivor.proc.pid])
    wait_for(lambda: all(all_seen(dovecot, s) for s in sources), 20, "mark-read")
    # every delivered mail has exactly one final (COMPLETED) MPL entry (the survivor's
    # recorder writes within its flush interval)
    wait_for(lambda: len(completed(tenant)) >= len(subjects), 10, "the MPL entries")
    entries = completed(tenant)
    assert len(entries) == len(subjects) and max(entries.values()) == 1
    # a mail sent twice is one the killed node never finished: its one COMPLETED entry is
    # the survivor's (nothing the killed node had recorded as done was sent again)
    finished_by = {e["subject"]: e["node"] for e in listed(tenant, "COMPLETED")}
    for subject in twice:
        assert finished_by[subject] == survivor.name
    # what the killed node had in hand ends ABANDONED (closed by the survivor, which saw it
    # gone), naming the node; nothing stays PROCESSING
    wait_for(lambda: not listed(tenant, "PROCESSING"), 15, "the killed node's entries closed")
    assert not listed(tenant, "RETRY")
    abandoned = listed(tenant, "ABANDONED")
    assert "slow 0-5" in {e["subject"] for e in abandoned}
    for summary in abandoned:
        shown = flowrt(tenant, "mpl", "show", summary["message_id"], "--format", "json")
        entry = json.loads(shown.output)
        assert entry["node"] == victim.name
        assert entry["error"]["chain"] == (
            "ABANDONED: the runtime stopped (crashed or was killed) while this message was "
            "processed"
        )
    text = flowrt(tenant, "mpl", "show", abandoned[0]["message_id"]).output
    assert re.search(rf"^Node +{re.escape(victim.name)}$", text, re.MULTILINE), text
    view = status(tenant)
    assert {n["node"]: n["state"] for n in view["nodes"]} == {
        victim.name: "gone",
        survivor.name: "running",
    }
    assert survivor.proc.poll() is None
    # one node sends the alerts (both read the one MPL): now the survivor
    wait_for(lambda: notifier_node(tenant) == survivor.name, 15, "the notifier's takeover")
    return {
        "mails": len(subjects),
        "lost": len(set(subjects) - set(got)),
        "duplicated": len(twice),
        "abandoned": len(abandoned),
        "seconds_after_kill": round(all_in, 1),
    }


def notifier_node(tenant: Path) -> str:
    result = flowrt(tenant, "locks", "list", "--format", "json")
    held = [
        lock["owner"].split("/")[0]
        for lock in json.loads(result.output)
        if lock["key"] == "runtime:notifier" and lock["state"] == "held"
    ]
    assert len(held) <= 1
    return held[0] if held else ""


def test_a_paused_node_does_not_touch_what_another_took(
    cluster: dict[str, Any], dovecot: DovecotServer
) -> None:
    tenant, target, flows = cluster["tenant"], cluster["target"], cluster["flows"]
    source = cluster["deploy"]("paused", in_flight=1)  # node-a holds the slow mail alone
    subjects = ["slow p-0"] + [f"mail p-{j}" for j in range(1, 6)]
    for subject in subjects:
        dovecot.append(source.address, "INBOX", mail(subject))
    a = cluster["start"]("node-a", lease="3s", SLOW_SECONDS="1")
    wait_for(lambda: marker_pid(flows) == a.proc.pid, 30, "node-a in the slow mail")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        cluster["start"]("node-b", lease="3s", SLOW_SECONDS="0")
        wait_for(lambda: sum(arrived(dovecot, target).values()) >= 6, 40, "node-b's deliveries")
        wait_for(lambda: all_seen(dovecot, source), 20, "node-b's mark-read")
        before = dovecot.messages(source.address, "INBOX")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # node-a wakes up in the middle of the slow mail: it must hand it back
    wait_for(
        lambda: b"lease" in a.log.read_bytes() and b"taken over" in a.log.read_bytes(),
        20,
        "node-a to notice",
    )
    time.sleep(1.5)  # give a wrong write the chance to happen
    assert dovecot.messages(source.address, "INBOX") == before, "no mailbox change"
    got = arrived(dovecot, target)
    assert set(got) == set(subjects) and max(got.values()) == 1
    entries = completed(tenant)
    assert len(entries) == 6 and max(entries.values()) == 1
    abandoned = flowrt(tenant, "mpl", "list", "--status", "ABANDONED", "--format", "json")
    assert len(json.loads(abandoned.output)) == 1  # node-a's attempt at the slow mail


def test_postgresql_restart_mid_run_nothing_lost(
    cluster: dict[str, Any], dovecot: DovecotServer, postgres: PostgresServer
) -> None:
    tenant, target = cluster["tenant"], cluster["target"]
    source = cluster["deploy"]("restart")
    first = [f"mail r-{j}" for j in range(10)]
    for subject in first:
        dovecot.append(source.address, "INBOX", mail(subject))
    cluster["start"]("node-a", lease="4s")
    wait_for(lambda: sum(arrived(dovecot, target).values()) >= 3, 40, "the first deliveries")
    postgres.restart()
    later = [f"mail r-{j}" for j in range(10, 20)]
    for subject in later:
        dovecot.append(source.address, "INBOX", mail(subject))
    wait_for(lambda: sum(arrived(dovecot, target).values()) >= 20, 50, "every delivery")
    got = arrived(dovecot, target)
    assert set(got) == set(first + later) and max(got.values()) == 1
    wait_for(lambda: len(completed(tenant)) == 20, 20, "the MPL to catch up")


def monitor_url(node: Node) -> str:
    def found() -> str:
        for line in node.log.read_text().splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("event") == "monitor serving":
                return str(record["url"])
        return ""

    wait_for(lambda: bool(found()), 20, "the monitor's address in the node's log")
    return found()


def test_every_nodes_monitor_shows_which_node_runs_each_flow(cluster: dict[str, Any]) -> None:
    """The flows view comes from the shared store: a monitor on a machine whose own node runs
    nothing (or none at all) shows the flows another node runs, and which node that is."""
    tenant = cluster["tenant"]
    for name in ("mon0", "mon1"):
        cluster["deploy"](name)
    cluster["start"]("node-b")

    def runners() -> dict[str, str]:
        return {row["flow"]: row["node"] for row in status(tenant)["flows"]}

    wait_for(lambda: runners() == {"mon0": "node-b", "mon1": "node-b"}, 30, "node-b's polls")
    # a monitor of this tenant directory, with no runtime of its own here
    with TestClient(create_app(MonitorConfig(Tenant(tenant)))) as client:

        def shown_nodes() -> set[str]:
            return {r["node"] for r in client.get("/api/flows").json()["flows"]}

        # between polls (no lease held) the node that polled last, once it reported a poll
        wait_for(lambda: shown_nodes() == {"node-b"}, 10, "the monitor to name node-b")
        shown = client.get("/api/flows").json()
        assert [(r["flow"], r["state"], r["node"]) for r in shown["flows"]] == [
            ("mon0", "STARTED", "node-b"),
            ("mon1", "STARTED", "node-b"),
        ]
        assert [(n["node"], n["state"]) for n in shown["nodes"]] == [("node-b", "running")]
        page = client.get("/flows").text
        assert "node-b" in page and "NOT RUNNING" not in page
        assert client.get("/readyz").status_code == 200

    # node-a's own monitor (inside its runtime) shows the same view of both nodes
    a = cluster["start"]("node-a", args=("--http", "127.0.0.1:0"))
    with httpx.Client(base_url=monitor_url(a), timeout=10) as http:
        shown = http.get("/api/flows").json()
        assert {(r["flow"], r["state"]) for r in shown["flows"]} == {
            ("mon0", "STARTED"),
            ("mon1", "STARTED"),
        }
        assert {r["node"] for r in shown["flows"]} <= {"node-a", "node-b"}
        assert {n["node"]: n["state"] for n in shown["nodes"]} == {
            "node-a": "running",
            "node-b": "running",
        }


def alerted(dovecot: DovecotServer, user: MailboxUser) -> collections.Counter[str]:
    """How many alert mails name each MPL message ID."""
    found: collections.Counter[str] = collections.Counter()
    for _uid, _flags, raw in dovecot.messages(user.address, "INBOX"):
        text = email.message_from_bytes(raw, policy=email.policy.default)
        body = text.get_body(("plain",))
        assert body is not None
        match = re.search(r"Message (\S+) of flow", body.get_content())
        assert match, body.get_content()
        found[match.group(1)] += 1
    return found


def test_two_nodes_send_each_dead_letter_alert_once_across_a_kill_9(
    cluster: dict[str, Any],
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
) -> None:
    """One node sends the alerts (the notifier's lease), from the notification log in the
    store, whichever machine it is on: node-b sends, then node-a, then node-b again after
    node-a was killed; each goes on from where the one before stopped (node-b not from where
    it once was), so no alert comes twice and none is lost."""
    tenant = cluster["tenant"]
    ops = new_mailbox_user(prefix="ops")
    set_server = flowrt(
        tenant,
        *("notify", "server", "set", f"127.0.0.1:{postfix.smtps_port}"),
        *("--protection", "smtps", "--credential", "smtp-out"),
        *("--from", "accounting@example.com", "--timeout", "5s"),
    )
    assert set_server.exit_code == 0, set_server.output
    for args in (
        ("rule", "add", "dead", "--on", "dead-letter", "--to", ops.address),
        ("limit", "100"),
    ):
        result = flowrt(tenant, "notify", *args)
        assert result.exit_code == 0, result.output
    # Postfix refuses the recipient; after one attempt the mail is a dead letter
    on_error = "    on-error {\n        max-attempts 1\n    }\n"
    source = cluster["deploy"]("refused", to="nobody@example.com", on_error=on_error)

    def refuse(numbers: range) -> None:
        for i in numbers:
            dovecot.append(source.address, "INBOX", mail(f"refused {i}"))

    def alerts() -> int:
        return sum(alerted(dovecot, ops).values())

    b = cluster["start"]("node-b", copy=True)  # its files are its own, the store is shared
    wait_for(lambda: notifier_node(tenant) == "node-b", 15, "node-b to send the alerts")
    refuse(range(1))
    wait_for(lambda: alerts() >= 1, 60, "node-b's alert")
    a = cluster["start"]("node-a")
    b.stop()  # hands the notifier's lease over
    wait_for(lambda: notifier_node(tenant) == "node-a", 15, "node-a to send the alerts")
    refuse(range(1, 3))
    wait_for(lambda: alerts() >= 3, 60, "node-a's alerts")
    cluster["start"]("node-b", home=b.home)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    refuse(range(3, 5))  # while no one sends alerts

    def dead_letters() -> dict[str, str]:
        rows = listed(tenant, "ESCALATED")
        return {row["message_id"]: row["subject"] for row in rows}

    wait_for(lambda: len(set(dead_letters().values())) >= 5, 60, "five dead letters")
    wait_for(lambda: notifier_node(tenant) == "node-b", 20, "node-b to take over again")
    wait_for(lambda: set(alerted(dovecot, ops)) >= set(dead_letters()), 60, "every alert")
    time.sleep(3)  # a notifier cycle or two more: nothing may come twice
    got = alerted(dovecot, ops)
    assert set(got) == set(dead_letters()), "every dead letter alerted, no other message"
    assert max(got.values()) == 1, "none twice"
    assert sorted(set(dead_letters().values())) == [f"refused {i}" for i in range(5)]
    # the notification log and counters are the store's: the same from any node's directory
    for home in (tenant, b.home):
        log = json.loads(flowrt(home, "notify", "log", "--format", "json").output)
        assert sorted(a["mpl_id"] for a in log if a["status"] == "sent") == sorted(got)
        counters = json.loads(flowrt(home, "notify", "counters", "--format", "json").output)
        assert [(c["recipient"], c["sent_24h"]) for c in counters] == [(ops.address, len(got))]


def test_workers_on_a_shared_store_split_the_mailbox_under_the_node(
    cluster: dict[str, Any], dovecot: DovecotServer
) -> None:
    """A node runs a flow with workers as a runtime on the embedded store does: its worker
    takes its partition, each mail is sent once, and the worker's MPL entries name it after
    the node (what the nodes that sweep a gone node's entries match)."""
    tenant, target = cluster["tenant"], cluster["target"]
    source = cluster["deploy"]("split", workers=2)
    subjects = [f"mail w-{j}" for j in range(30)]
    for subject in subjects:
        dovecot.append(source.address, "INBOX", mail(subject))
    node = cluster["start"]("node-w")
    wait_for(lambda: sum(arrived(dovecot, target).values()) >= 30, 60, "every mail")
    wait_for(lambda: all_seen(dovecot, source), 30, "every mark")
    assert arrived(dovecot, target) == collections.Counter(subjects)
    senders = collections.Counter(pid for _subject, pid in delivered(dovecot, target))
    assert len(senders) == 2 and node.proc.pid in senders  # the node and its worker
    store = open_mpl(Tenant(tenant))
    assert store is not None
    try:
        names = collections.Counter(e.node for e in store.list_entries(limit=None))
    finally:
        store.close()
    assert names == collections.Counter({"node-w": 15, "node-w/split worker 2/2": 15})

    def processes() -> list[dict[str, Any]]:
        rows = [row for row in status(tenant)["flows"] if row["flow"] == "split"]
        return list(rows[0]["processes"]) if rows else []

    wait_for(lambda: sum(p["completed"] for p in processes()) == 30, 20, "the counts")
    (row,) = [row for row in status(tenant)["flows"] if row["flow"] == "split"]
    assert row["node"] == "node-w"  # the node that holds (or last polled) its partitions
    assert [(p["worker"], p["state"]) for p in processes()] == [
        ("1/2", "STARTED"),
        ("2/2", "STARTED"),
    ]


def test_a_gone_nodes_worker_entries_are_closed_by_the_node_that_takes_over(
    cluster: dict[str, Any], dovecot: DovecotServer
) -> None:
    """kill -9 of a node whose worker is in the middle of a mail: the worker dies with it,
    another node takes the mailbox over and closes the worker's entry ABANDONED, naming
    it; nothing is lost."""
    tenant, target, flows = cluster["tenant"], cluster["target"], cluster["flows"]
    source = cluster["deploy"]("split", workers=2)
    # UID 1 is the worker's (process 2 of 2 takes the odd UIDs): the slow mail is in its hands
    subjects = ["slow w-0"] + [f"mail w-{j}" for j in range(1, 12)]
    for subject in subjects:
        dovecot.append(source.address, "INBOX", mail(subject))
    a = cluster["start"]("node-w", lease="3s", SLOW_SECONDS="60")
    wait_for(lambda: marker_pid(flows) is not None, 30, "the worker in the slow mail")
    worker = marker_pid(flows)
    assert worker != a.proc.pid

    def in_hand() -> set[str]:
        return {e["subject"] for e in listed(tenant, "PROCESSING")}

    wait_for(lambda: "slow w-0" in in_hand(), 10, "the worker's entry written")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    wait_for(lambda: not alive(worker), 10, "its worker to die with it")
    cluster["start"]("node-b", lease="3s", SLOW_SECONDS="0")
    wait_for(lambda: set(arrived(dovecot, target)) >= set(subjects), 60, "every mail")
    wait_for(lambda: not listed(tenant, "PROCESSING"), 20, "the gone node's entries closed")
    abandoned = {e["subject"]: e["message_id"] for e in listed(tenant, "ABANDONED")}
    assert "slow w-0" in abandoned
    shown = flowrt(tenant, "mpl", "show", abandoned["slow w-0"], "--format", "json")
    assert json.loads(shown.output)["node"] == "node-w/split worker 2/2"
    assert max(arrived(dovecot, target).values()) <= 2  # at most a transaction in flight
