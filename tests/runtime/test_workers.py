"""``workers N``: several processes work one mailbox, each the mails of its UID partition,
and every guarantee of one process holds.

Real Dovecot holds the source mailbox; a scripted SMTP server (aiosmtpd) receives, so that
copies can be counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from flowrt.mpl.store import MplStore
from flowrt.runtime.starter import STARTER
from flowrt.tenant import Tenant
from tests.monitor.test_runtime_monitor import monitor_url, sample
from tests.proc import alive, stat_fields
from tests.runtime.test_in_flight import FLOW as IN_FLIGHT_FLOW
from tests.runtime.test_in_flight import (
    _logging_restored,
    entry_statuses,
    fill,
    received,
    seen,
    source,
)
from tests.runtime.test_runtime_e2e import Runtime, flowrt, tenant, wait_for
from tests.servers import DovecotServer, MailboxUser
from tests.servers.scripted_smtp import ScriptedSMTPServer

__all__ = ["_logging_restored", "source", "tenant"]  # fixtures, imported for pytest

pytestmark = pytest.mark.servers

# the flow of test_in_flight.py, with several workers
FLOW = IN_FLIGHT_FLOW.replace("flow inflight", "flow split").replace(
    "in-flight     {in_flight}", "in-flight     4\n        workers       {workers}"
)


def deploy(
    tenant: Path,
    dovecot: DovecotServer,
    smtp: ScriptedSMTPServer,
    workers: int,
    poll: str = "every 1s",
) -> None:
    path = tenant.parent / "split.flow"
    text = FLOW.format(imap=dovecot.imap_port, smtp=smtp.port, workers=workers)
    path.write_text(text.replace("poll          every 1s", f"poll          {poll}"))
    result = flowrt(tenant, "deploy", str(path))
    assert result.exit_code == 0, result.output


def nodes(tenant: Path) -> Counter[str]:
    with MplStore(Tenant(tenant).mpl_path) as store:
        return Counter(e.node for e in store.list_entries(limit=None))


def children(runtime: Runtime) -> dict[int, str]:
    """The runtime's child processes, pid: name (/proc/PID/comm)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = stat_fields(int(entry.name))
            if stat is None or int(stat[1]) != runtime.proc.pid or stat[0] == "Z":
                continue
            with contextlib.suppress(OSError):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
    return found


def open_files(pid: int) -> str:
    """A process's limits of open files (soft and hard), from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line
    raise AssertionError("no open-files limit")


def sorted_workers(runtime: Runtime) -> list[int]:
    """The workers' pids in partition order (2/N, 3/N, ...), by their process names."""
    named = {name: pid for pid, name in children(runtime).items() if name != STARTER}
    return [named[name] for name in sorted(named)]


def worker_pids(runtime: Runtime) -> list[int]:
    """The runtime's workers: its children but the starter that forks them."""
    return [pid for pid, name in children(runtime).items() if name != STARTER]


def process_rows(tenant: Path) -> list[dict[str, object]]:
    """What `flowrt status split --format json` says of each process of the flow."""
    shown = json.loads(flowrt(tenant, "status", "split", "--format", "json").output)
    return list(shown["flows"][0]["processes"])


def completed(tenant: Path) -> int:
    status = json.loads((tenant / "runtime" / "status.json").read_text())
    return int(status["flows"]["split"]["completed"])


def every_mail_sent_and_marked(
    smtp: ScriptedSMTPServer, dovecot: DovecotServer, source: MailboxUser, mails: int
) -> None:
    """Until mails 0 .. ``mails`` - 1 arrived (at least once) and all are marked read."""
    expected = {f"mail {i}" for i in range(mails)}
    wait_for(lambda: set(received(smtp)) >= expected, timeout=60, what="every mail")
    wait_for(lambda: all(seen(dovecot, source).values()), timeout=30, what="every mark")


def started_with_worker(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    smtp: ScriptedSMTPServer,
    *,
    mails: int,
    first: int,
) -> tuple[Runtime, int]:
    """`workers 2` deployed, ``mails`` in the mailbox, the runtime started: its worker's
    pid once ``first`` mails arrived (both processes are at work then)."""
    deploy(tenant, dovecot, smtp, workers=2)
    fill(dovecot, source, mails)
    runtime = Runtime(tenant)
    wait_for(lambda: len(worker_pids(runtime)) == 1, timeout=20, what="the worker")
    (worker,) = worker_pids(runtime)
    wait_for(lambda: len(smtp.received) >= first, timeout=30, what="the first mails")
    return runtime, worker


def test_three_workers_share_the_mailbox_and_send_each_mail_once(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    deploy(tenant, dovecot, smtp, workers=3)
    fill(dovecot, source, 60)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))  # a login shell's
    try:
        runtime = Runtime(tenant, "--http", "127.0.0.1:0")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        wait_for(lambda: len(smtp.received) >= 60, timeout=60, what="every mail")
        wait_for(lambda: all(seen(dovecot, source).values()), timeout=30, what="every mark")
        # the runtime polls the first partition itself; the starter forked the others
        assert sorted(children(runtime).values()) == [STARTER, "flowrt w2/3", "flowrt w3/3"]
        # with the runtime's raised limit of open files (a connection per flow)
        assert {open_files(pid) for pid in worker_pids(runtime)} == {open_files(runtime.proc.pid)}
        wait_for(
            lambda: completed(tenant) == 60, timeout=10, what="the workers' counts in the status"
        )
        status = json.loads((tenant / "runtime" / "status.json").read_text())
        assert status["flows"]["split"]["state"] == "STARTED"
        # `flowrt status` shows each process: its partition, pid, state and counts
        shown = json.loads(flowrt(tenant, "status", "split", "--format", "json").output)
        processes = shown["flows"][0]["processes"]
        assert [p["worker"] for p in processes] == ["1/3", "2/3", "3/3"]
        assert [p["pid"] for p in processes] == [runtime.proc.pid, *sorted_workers(runtime)]
        assert {p["state"] for p in processes} == {"STARTED"}
        assert [p["completed"] for p in processes] == [20, 20, 20]
        text = flowrt(tenant, "status", "split").output
        assert "split: 3 processes (workers)" in text and "WORKER" in text, text
        # /metrics counts every process's mails, and their durations
        text = httpx.get(monitor_url(runtime) + "/metrics", timeout=10).text
        assert sample(text, "flowrt_messages_total", flow="split", status="COMPLETED") == 60
        assert sample(text, "flowrt_message_duration_seconds_count", flow="split") == 60
        # each partition polls under its own lease and keeps its own health
        with sqlite3.connect(Tenant(tenant).state_path) as db:
            pollers = {row[0] for row in db.execute("SELECT poller FROM poller_health")}
        assert pollers == {f"split:imap#{k}/3" for k in (1, 2, 3)}
    finally:
        assert runtime.stop() == 0
    assert Counter(received(smtp)) == Counter({f"mail {i}": 1 for i in range(60)})
    assert entry_statuses(tenant) == Counter({"COMPLETED": 60})
    # each partition's entries name their process; UIDs 1..60 split 20 / 20 / 20
    assert nodes(tenant) == Counter({"": 20, "split worker 2/3": 20, "split worker 3/3": 20})


def test_a_killed_worker_is_started_again_and_its_mails_end(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.05})
    runtime, worker = started_with_worker(tenant, dovecot, source, smtp, mails=80, first=10)
    try:
        os.kill(worker, signal.SIGKILL)
        every_mail_sent_and_marked(smtp, dovecot, source, 80)
        restarted = worker_pids(runtime)
        assert len(restarted) == 1 and restarted != [worker]
        wait_for(lambda: process_rows(tenant)[1]["pid"] == restarted[0], 10, "the new pid")
        assert process_rows(tenant)[1]["restarts"] == 1
        log = runtime.log.read_text()
        assert "worker process exited; starting it again" in log
    finally:
        assert runtime.stop() == 0
    copies = Counter(received(smtp))
    assert len(copies) == 80  # nothing lost
    assert sum(n - 1 for n in copies.values()) <= 4  # at most its transactions in flight
    statuses = entry_statuses(tenant)
    assert set(statuses) <= {"COMPLETED", "ABANDONED"}, statuses  # every entry ended
    assert statuses["COMPLETED"] >= 80


def test_sigterm_stops_the_workers_and_hands_back_what_they_did_not_start(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.2})
    runtime, worker = started_with_worker(tenant, dovecot, source, smtp, mails=40, first=6)
    assert runtime.stop() == 0
    assert not alive(worker)
    sent = Counter(received(smtp))
    marks = seen(dovecot, source)
    assert all(n == 1 for n in sent.values())
    assert {s for s, read in marks.items() if read} == set(sent)
    assert any(not read for read in marks.values()), "everything was sent; proves nothing"
    assert entry_statuses(tenant) == Counter({"COMPLETED": len(sent)})
    assert nodes(tenant)["split worker 2/2"] > 0  # the worker did its share before the stop


def test_kill_9_of_the_runtime_takes_its_workers_and_the_next_start_finishes(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.05})
    runtime, worker = started_with_worker(tenant, dovecot, source, smtp, mails=60, first=10)
    (starter,) = [pid for pid, name in children(runtime).items() if name == STARTER]
    runtime.proc.send_signal(signal.SIGKILL)
    runtime.proc.wait(timeout=10)
    runtime._log_file.close()
    wait_for(lambda: not alive(worker), timeout=10, what="the worker to die with the runtime")
    wait_for(lambda: not alive(starter), timeout=10, what="the starter to die with it")
    runtime = Runtime(tenant)
    try:
        every_mail_sent_and_marked(smtp, dovecot, source, 60)
    finally:
        assert runtime.stop() == 0
    copies = Counter(received(smtp))
    assert len(copies) == 60
    assert sum(n - 1 for n in copies.values()) <= 8  # both processes' transactions in flight
    assert set(entry_statuses(tenant)) <= {"COMPLETED", "ABANDONED"}


def test_run_once_polls_the_whole_mailbox_in_one_process(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    deploy(tenant, dovecot, smtp, workers=2)
    fill(dovecot, source, 9)
    started = time.monotonic()
    result = flowrt(tenant, "run", "--once")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30
    assert Counter(received(smtp)) == Counter({f"mail {i}": 1 for i in range(9)})
    assert nodes(tenant) == Counter({"": 9})


def test_idle_workers_each_take_new_mail_of_their_partition_once(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    deploy(tenant, dovecot, smtp, workers=2, poll="idle")
    runtime = Runtime(tenant)
    try:
        wait_for(lambda: len(worker_pids(runtime)) == 1, timeout=20, what="the worker")
        time.sleep(1.0)  # both IDLE sessions are up: what comes now is pushed
        fill(dovecot, source, 12)
        wait_for(lambda: len(smtp.received) >= 12, timeout=30, what="the pushed mails")
        wait_for(lambda: all(seen(dovecot, source).values()), timeout=30, what="every mark")
    finally:
        assert runtime.stop() == 0
    assert Counter(received(smtp)) == Counter({f"mail {i}": 1 for i in range(12)})
    assert nodes(tenant) == Counter({"": 6, "split worker 2/2": 6})


def test_a_new_version_with_more_workers_replaces_the_old_processes(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    runtime, old = started_with_worker(tenant, dovecot, source, smtp, mails=20, first=20)
    try:
        deploy(tenant, dovecot, smtp, workers=3)  # picked up by the running runtime
        wait_for(lambda: not alive(old), timeout=30, what="the old version's worker to stop")
        wait_for(lambda: len(worker_pids(runtime)) == 2, timeout=30, what="the new workers")
        fill(dovecot, source, 30, prefix="later")
        wait_for(lambda: len(smtp.received) >= 50, timeout=60, what="the later mails")
        wait_for(lambda: all(seen(dovecot, source).values()), timeout=30, what="every mark")
    finally:
        assert runtime.stop() == 0
    expected = {f"mail {i}": 1 for i in range(20)} | {f"later {i}": 1 for i in range(30)}
    assert Counter(received(smtp)) == Counter(expected)
    assert {"split worker 2/3", "split worker 3/3"} <= set(nodes(tenant))


def test_a_flow_given_workers_while_the_runtime_runs_starts_them_as_new_processes(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    deploy(tenant, dovecot, smtp, workers=1)
    runtime = Runtime(tenant)
    try:
        assert children(runtime) == {}  # no flow sets workers: no starter is kept
        deploy(tenant, dovecot, smtp, workers=2)
        wait_for(lambda: len(worker_pids(runtime)) == 1, timeout=30, what="the worker")
        (name,) = children(runtime).values()
        assert not name.startswith("flowrt w")  # a new Python process, not a fork
        fill(dovecot, source, 20)
        wait_for(lambda: len(smtp.received) >= 20, timeout=60, what="every mail")
        wait_for(lambda: all(seen(dovecot, source).values()), timeout=30, what="every mark")
    finally:
        assert runtime.stop() == 0
    assert Counter(received(smtp)) == Counter({f"mail {i}": 1 for i in range(20)})
    assert nodes(tenant) == Counter({"": 10, "split worker 2/2": 10})


def test_a_worker_is_started_as_a_new_process_when_the_starter_is_gone(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.05})
    runtime, worker = started_with_worker(tenant, dovecot, source, smtp, mails=60, first=10)
    try:
        (starter,) = [pid for pid, name in children(runtime).items() if name == STARTER]
        os.kill(starter, signal.SIGKILL)
        wait_for(lambda: STARTER not in children(runtime).values(), 10, "the starter reaped")
        assert alive(worker)  # the runtime's child, not the starter's
        os.kill(worker, signal.SIGKILL)
        every_mail_sent_and_marked(smtp, dovecot, source, 60)
        (name,) = children(runtime).values()
        assert not name.startswith("flowrt w")
    finally:
        assert runtime.stop() == 0
    copies = Counter(received(smtp))
    assert len(copies) == 60
    assert sum(n - 1 for n in copies.values()) <= 4
    assert set(entry_statuses(tenant)) <= {"COMPLETED", "ABANDONED"}


def test_ctrl_c_stops_the_runtime_its_workers_and_the_starter(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.1})
    deploy(tenant, dovecot, smtp, workers=3)
    fill(dovecot, source, 60)
    log = tenant.parent / "ctrl-c.log"
    with log.open("w") as err:
        # a terminal's Ctrl-C signals its whole process group
        proc = subprocess.Popen(
            ["flowrt", "--tenant", str(tenant), "run", "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            wait_for(lambda: len(smtp.received) >= 10, timeout=30, what="the first mails")
            group = [int(p.name) for p in Path("/proc").iterdir() if _in_group(p, proc.pid)]
            assert len(group) == 4  # the runtime, the starter, two workers
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in group), timeout=10, what="every process")
    assert "Traceback" not in log.read_text()
    sent = Counter(received(smtp))
    assert all(n == 1 for n in sent.values())
    assert entry_statuses(tenant) == Counter({"COMPLETED": len(sent)})


def _in_group(entry: Path, group: int) -> bool:
    stat = stat_fields(int(entry.name)) if entry.name.isdigit() else None
    return stat is not None and int(stat[3]) == group


def test_a_damaged_deployment_does_not_keep_a_runtime_with_workers_from_starting(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    deploy(tenant, dovecot, smtp, workers=2)
    (tenant / "deployed" / "split.json").write_text("{ not json")
    runtime = Runtime(tenant)  # it starts: status written with its pid
    try:
        assert STARTER not in children(runtime).values()
        wait_for(lambda: "cannot read the deployments" in runtime.log.read_text(), 20, "the log")
    finally:
        assert runtime.stop() == 0


def test_sessions_cut_by_the_server_mid_run_lose_and_repeat_nothing(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.05})
    runtime, worker = started_with_worker(tenant, dovecot, source, smtp, mails=80, first=10)
    try:
        dovecot.kick(source.address)  # both processes' IMAP sessions end mid-batch
        every_mail_sent_and_marked(smtp, dovecot, source, 80)
        assert worker_pids(runtime) == [worker]  # the worker came through it, not restarted
    finally:
        assert runtime.stop() == 0
    assert Counter(received(smtp)) == Counter({f"mail {i}": 1 for i in range(80)})
    assert entry_statuses(tenant) == Counter({"COMPLETED": 80})
    assert dovecot.logins(source.address) >= 4  # each process logged in again
