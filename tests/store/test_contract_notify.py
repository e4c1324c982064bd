"""The notification log's contract on SQLite and on PostgreSQL: a cycle's decisions commit
in one claim, an alert is claimed once even by two senders at once, a retry is taken by one
sender, and the counters read the same."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from flowrt.adapters.mail.smtp.transaction import TransactionResult
from flowrt.mpl.model import LogLevel
from flowrt.mpl.recorder import MplRecorder
from flowrt.notify.config import NotifyServer, edit_config, make_rule, replace
from flowrt.notify.notifier import Notifier
from flowrt.notify.store import Claim, NewAttempt, NotifyLog, open_log
from flowrt.security import TenantSecurity
from flowrt.store import is_shared, open_mpl, open_state
from flowrt.tenant import Tenant

OPS = "ops@example.com"


@pytest.fixture
def log(tenant: Tenant) -> Iterator[NotifyLog]:
    opened = open_log(tenant)
    assert opened is not None
    with opened:
        yield opened


def alert(key: str, *recipients: str) -> tuple[str, tuple[NewAttempt, ...]]:
    return key, tuple(
        NewAttempt("r", "message-failed", key, to, f"s {key}", "b") for to in recipients
    )


def test_a_claim_records_an_alert_once(log: NotifyLog) -> None:
    first = log.claim(
        Claim(marks={"mpl_row": "7"}, watch=frozenset({"m1", "m2"}), alerts=(alert("k1", OPS),)),
        now=100.0,
        hold=60.0,
    )
    assert [(a.event_key, a.status, a.next_try) for a in first] == [("k1", "pending", 160.0)]
    again = log.claim(
        Claim(unwatch=frozenset({"m1"}), alerts=(alert("k1", OPS), alert("k2", OPS, "b@x"))),
        now=101.0,
        hold=60.0,
    )
    assert [(a.event_key, a.recipient) for a in again] == [("k2", OPS), ("k2", "b@x")]
    assert log.mark("mpl_row") == "7" and log.watched() == {"m2"}
    assert not log.first_time("k1", now=102.0)


def test_a_due_attempt_is_taken_by_one_sender(log: NotifyLog) -> None:
    (attempt,) = log.claim(Claim(alerts=(alert("k", OPS),)), now=100.0, hold=60.0)
    assert log.take_due(159.0, hold=60.0) == []  # its sender has it until then
    (taken,) = log.take_due(160.0, hold=60.0)
    assert taken.id == attempt.id
    assert log.take_due(160.0, hold=60.0) == []  # taken: due again at 220
    log.mark_sent(taken.id, now=161.0, reply="250 ok", digested=[])
    assert log.take_due(1000.0, hold=60.0) == []
    (counter,) = log.counters(now=162.0, window=86400.0)
    assert (counter.recipient, counter.sent, counter.held) == (OPS, 1, 0)
    assert log.sent_in_window(OPS, now=162.0, window=86400.0) == 1
    assert log.reset(OPS, now=163.0)
    assert log.sent_in_window(OPS, now=164.0, window=86400.0) == 0


class Outbox:
    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def __call__(
        self, server: NotifyServer, security: TenantSecurity, recipient: str, data: bytes
    ) -> TransactionResult:
        mail = email.message_from_bytes(data, policy=email.policy.default)
        self.subjects.append(str(mail["Subject"]))
        await asyncio.sleep(0)  # the other sender's turn
        return TransactionResult((recipient,), {}, {recipient: "250 Ok"}, "250 Ok")


def with_alerts(tenant: Tenant) -> Tenant:
    with edit_config(tenant) as edit:
        edit.value = replace(
            edit.value,
            server=NotifyServer("127.0.0.1", 465, "smtps", "flowrt@example.com", timeout=5),
            limit=100,
            rules=(make_rule("all", "message-failed", [OPS]),),
        )
    return tenant


def node_copy(tenant: Tenant) -> Tenant:
    """The tenant directory as a second machine has it (a copy: same store, same files)."""
    if not is_shared(tenant):
        return tenant  # one SQLite store: the second sender is on the same machine
    copy = tenant.root.parent / "second-node"
    shutil.copytree(tenant.root, copy)
    return Tenant(copy)


def fail(tenant: Tenant, numbers: range) -> None:
    store = open_mpl(tenant)
    assert store is not None
    with store, MplRecorder(store, level=LogLevel.INFO) as recorder:
        for i in numbers:
            entry = recorder.begin(f"fail-{i:02d}-xxxxxxxx", f"c{i}", "f", 1, "imap", ["smtp"])
            entry.fail(RuntimeError(f"boom {i}"))


async def test_two_senders_at_once_send_each_alert_once(tenant: Tenant) -> None:
    """Two notifiers (on PostgreSQL: on two nodes, each with its copy of the tenant
    directory; a node that lost the notifier's lease while paused, and the one that took it
    over): every failure is alerted, once."""
    tenants = [with_alerts(tenant), node_copy(tenant)]
    outbox = Outbox()
    senders = [Notifier(t, TenantSecurity.open(t), send=outbox) for t in tenants]
    try:
        for sender in senders:
            sender.prime()
        fail(tenant, range(10))
        for _ in range(2):
            await asyncio.gather(*(sender.run_once() for sender in senders))
    finally:
        for sender in senders:
            sender.close()
    assert len(outbox.subjects) == 10
    assert len(set(outbox.subjects)) == 10


async def test_the_next_sender_goes_on_where_the_last_one_stopped(tenant: Tenant) -> None:
    """The sender dies; failures go on being recorded; another node's sender takes over:
    it alerts what the first had not read (nothing lost) and nothing it had (no repeats),
    also a message the first saw unfinished that failed meanwhile."""
    with_alerts(tenant)
    second_tenant = node_copy(tenant)  # the second node was set up with the first
    outbox = Outbox()
    first = Notifier(tenant, TenantSecurity.open(tenant), send=outbox)
    try:
        first.prime()
        fail(tenant, range(3))
        store = open_mpl(tenant)
        assert store is not None
        with store, MplRecorder(store, level=LogLevel.INFO) as recorder:
            open_one = recorder.begin("late-xxxxxxxxxxxx", "late", "f", 1, "imap", ["smtp"])
            recorder.flush()
            await first.run_once()  # sees fail-00..02 and the open one
            open_one.fail(RuntimeError("boom late"))
        assert len(outbox.subjects) == 3
    finally:
        first.close()  # dies here (nothing more of it runs)
    fail(tenant, range(3, 6))
    second = Notifier(second_tenant, TenantSecurity.open(second_tenant), send=outbox)
    try:
        second.prime()
        await second.run_once()
        await second.run_once()
    finally:
        second.close()
    assert sorted(s.rsplit(": ", 1)[-1] for s in outbox.subjects) == sorted(
        [f"boom {i}" for i in range(6)] + ["boom late"]
    )


async def test_a_flow_in_error_on_any_node_is_alerted_once_by_whoever_sends(
    tenant: Tenant,
) -> None:
    """A flow in ERROR is known from the runtime's report: its status file, or on a shared
    store the node registry; when the condition began is kept with the log, so a sender
    that takes over counts from then, not from its own start."""
    from flowrt.runtime.status import ERROR, FlowStatus, RuntimeStatus, now_iso, write_status
    from flowrt.store.pg.state import PgStateDB

    with edit_config(tenant) as edit:
        edit.value = replace(
            edit.value,
            server=NotifyServer("127.0.0.1", 465, "smtps", "flowrt@example.com", timeout=5),
            rules=(make_rule("err", "flow-error", [OPS], duration=60.0),),
        )
    report = RuntimeStatus(pid=1, host="h", started_at=now_iso(), heartbeat_at=now_iso())
    report.flows["orders"] = FlowStatus("orders", 3, state=ERROR, reason="password is wrong")
    state = open_state(tenant)

    def heartbeat() -> None:
        if isinstance(state, PgStateDB):  # a node of a shared store reports into it
            state.node_heartbeat("n1", json.loads(report.to_json()))
        else:
            (tenant.root / "runtime").mkdir(exist_ok=True)
            write_status(tenant, report)

    if isinstance(state, PgStateDB):
        state.register_node("n1")
    heartbeat()
    second_tenant = node_copy(tenant)
    outbox = Outbox()
    clock = [1_800_000_000.0]
    first = Notifier(tenant, TenantSecurity.open(tenant), send=outbox, clock=lambda: clock[0])
    try:
        await first.run_once()  # in ERROR since now: not yet for 60 s
    finally:
        first.close()
    clock[0] += 61
    heartbeat()
    second = Notifier(
        second_tenant, TenantSecurity.open(second_tenant), send=outbox, clock=lambda: clock[0]
    )
    try:
        await second.run_once()
        await second.run_once()
    finally:
        second.close()
        assert state is not None
        state.close()
    assert len(outbox.subjects) == 1 and "flow orders in ERROR" in outbox.subjects[0]


class Captured:
    """A store that keeps the rows a recorder writes (to insert them by hand)."""

    def __init__(self) -> None:
        self.entries: list[Sequence[Any]] = []

    def set_checkpointing(self, *, background: bool) -> None:
        del background

    def write_batch(
        self,
        entries: Sequence[Sequence[Any]],
        properties: Sequence[Sequence[Any]] = (),
        contents: Sequence[Sequence[Any]] = (),
    ) -> None:
        self.entries += entries


async def test_a_row_that_commits_after_a_higher_one_is_alerted(tenant: Tenant) -> None:
    """Nodes write the MPL at once: an entry's id is taken at insert, so a lower id can
    become visible after a higher one that the notifier already read. It is alerted all
    the same (the watermark waits until such rows have settled)."""
    if not is_shared(tenant):
        pytest.skip("SQLite commits one writer at a time, in id order")
    from flowrt.store.pg.mpl import _UPSERT, PgMplStore

    with_alerts(tenant)
    captured = Captured()
    with MplRecorder(captured, level=LogLevel.INFO) as recorder:  # type: ignore[arg-type]
        recorder.begin("late-xxxxxxxxxxxx", "late", "f", 1, "imap", ["smtp"]).fail(
            RuntimeError("boom late")
        )
    outbox = Outbox()
    sender = Notifier(tenant, TenantSecurity.open(tenant), send=outbox)
    store = open_mpl(tenant)
    assert isinstance(store, PgMplStore)
    try:
        sender.prime()
        with store.db.connection() as slow, slow.transaction():
            slow.execute(_UPSERT, captured.entries[-1])  # its id is taken, not yet visible
            fail(tenant, range(1))  # a higher id, committed at once
            await sender.run_once()
            assert [s.rsplit(": ", 1)[-1] for s in outbox.subjects] == ["boom 0"]
        await sender.run_once()  # the late row is visible now
        await sender.run_once()
    finally:
        store.close()
        sender.close()
    assert [s.rsplit(": ", 1)[-1] for s in outbox.subjects] == ["boom 0", "boom late"]
