"""The runtime-state contract: idempotency records, leases with fencing, poller health and
deployments behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowrt.dsl import parse_text
from flowrt.errors import FlowError
from flowrt.source_state import Fence, LeaseLost, PollerHealth
from flowrt.store import StateBackend, open_deployments, open_state
from flowrt.store.config import StoreConfig
from flowrt.tenant import Tenant
from tests.store.conftest import make_pg_tenant

FLOW = Path(__file__).resolve().parents[2] / "flows"


@pytest.fixture
def state(tenant: Tenant) -> Iterator[StateBackend]:
    opened = open_state(tenant)
    assert opened is not None
    try:
        yield opened
    finally:
        opened.close()


def test_records_count_attempts_and_never_turn_back(state: StateBackend) -> None:
    assert state.record_failure("mb", "k1", error="smtp down", message_id="<a@x>") == 1
    assert state.record_failure("mb", "k1", error="smtp down again") == 2
    state.record_done("mb", "k1", generation="7", message_id="<a@x>", action="archive")
    assert state.record_failure("mb", "k1", error="late") == 3  # done stays done
    record = state.records("mb", ["k1", "k2"])["k1"]
    assert record.done and record.attempts == 3 and not record.post_processed
    state.mark_post_processed("mb", ["k1"])
    assert state.records("mb", ["k1"])["k1"].post_processed
    found = state.find_by_message_ids("mb", ["<a@x>", "<b@x>"], other_generation_than="8")
    assert found == {"<a@x>"}
    assert state.find_by_message_ids("mb", ["<a@x>"], other_generation_than="7") == set()
    assert state.keys("mb") == ["k1"]
    assert state.forget("mb", ["k1"]) == 1
    assert state.records("mb", ["k1"]) == {}


def test_purge_keeps_kept_mails(state: StateBackend) -> None:
    state.record_done("mb", "kept", action="keep")
    state.record_done("mb", "moved", action="archive")
    state.mark_post_processed("mb", ["kept", "moved"])
    assert state.purge_records(time.time() + 10, mailbox="mb") == 1
    assert list(state.records("mb", ["kept", "moved"])) == ["kept"]


def test_lease_busy_and_takeover(state: StateBackend) -> None:
    taken, _lease = state.acquire_lock("box", "node-a/1", 60, info="flow:imap")
    assert taken
    busy, holder = state.acquire_lock("box", "node-b/2", 60)
    assert not busy and holder.owner == "node-a/1" and holder.info == "flow:imap"
    assert state.renew_lock("box", "node-a/1", 0.01)
    time.sleep(0.05)
    taken, lease_b = state.acquire_lock("box", "node-b/2", 60)
    assert taken and lease_b.owner == "node-b/2"
    assert not state.renew_lock("box", "node-a/1", 60)  # a's renewal learns it lost
    assert state.release_lock("box", "node-b/2")
    assert state.force_release("box") is None


def test_fenced_writes_refused_after_takeover(pg_config: StoreConfig, tmp_path: Path) -> None:
    """PostgreSQL only: the SQLite store has one runtime and does not fence (unchanged)."""
    state = open_state(make_pg_tenant(tmp_path / "t", pg_config))
    assert state is not None
    try:
        _fencing(state)
    finally:
        state.close()


def _fencing(state: StateBackend) -> None:
    taken, lease = state.acquire_lock("box", "node-a/1", 60, info="flow:imap")
    assert taken
    busy, holder = state.acquire_lock("box", "node-b/2", 60)
    assert not busy and holder.owner == "node-a/1"
    assert state.renew_lock("box", "node-a/1", 60)
    state.record_done("mb", "k", fence=lease.fence)  # our lease: accepted
    # node-a stops renewing (paused); its lease runs out and node-b takes the mailbox
    assert state.renew_lock("box", "node-a/1", 0.01)
    time.sleep(0.05)
    taken, lease_b = state.acquire_lock("box", "node-b/2", 60)
    assert taken and lease_b.owner == "node-b/2"
    with pytest.raises(LeaseLost):
        state.record_done("mb", "k2", fence=lease.fence)
    with pytest.raises(LeaseLost):
        state.mark_post_processed("mb", ["k"], fence=lease.fence)
    with pytest.raises(LeaseLost):
        state.check_fence(lease.fence)
    assert "k2" not in state.records("mb", ["k2"])
    assert not state.renew_lock("box", "node-a/1", 60)  # a's renewal learns it lost
    state.check_fence(lease_b.fence)
    assert [lock.owner for lock in state.locks()] == ["node-b/2"]
    released = state.force_release("box")
    assert released is not None and released.owner == "node-b/2"
    assert state.locks() == []
    with pytest.raises(LeaseLost):
        state.check_fence(Fence("box", "node-b/2", lease_b.epoch))


def test_poller_health_round_trip(state: StateBackend) -> None:
    state.save_health(PollerHealth("flow:imap", mailbox="box", consecutive_failures=2))
    state.save_health(PollerHealth("flow:imap", mailbox="box", handled=5))
    [health] = state.health("flow:imap")
    assert health.handled == 5 and health.consecutive_failures == 0


def test_deployments_versions_and_generation(tenant: Tenant) -> None:
    store = open_deployments(tenant)
    try:
        text = (FLOW / "mail.flow").read_text()
        [flow] = parse_text(text, str(FLOW / "mail.flow")).flows
        start = store.generation()
        first = store.deploy(flow)
        assert first.changed and first.version == 1
        assert not store.deploy(flow).changed
        [changed] = parse_text(text + "\n# changed\n", "x.flow").flows
        assert store.deploy(changed).version == 2
        assert store.generation() == start + 2
        assert store.names() == [flow.name]
        current = store.get(flow.name)
        assert current is not None and current.version == 2 and current.load().name == flow.name
        assert store.undeploy(flow.name).version == 2
        assert store.all() == []
        with pytest.raises(FlowError, match="no deployed flow"):
            store.undeploy(flow.name)
    finally:
        store.close()


def test_a_version_keeps_its_parameters_and_scripts(tenant: Tenant) -> None:
    from flowrt.runtime.bundle import Bundle, ScriptRef

    store = open_deployments(tenant)
    try:
        text = (FLOW / "mail.flow").read_text()
        [flow] = parse_text(text, str(FLOW / "mail.flow")).flows
        bundle = Bundle(
            {"steps.py": b"def go(exchange):\n    return None\n", "pkg/util.py": b"X = 1\n"},
            (ScriptRef(module="steps", function="go", line=12, bundled=True),),
        )
        first = store.deploy(
            flow, params={"HOST": "a"}, param_sources={"HOST": "file"}, bundle=bundle
        )
        again = store.deploy(flow, params={"HOST": "a"}, bundle=bundle)
        assert first.changed and not again.changed
        assert store.deploy(flow, params={"HOST": "b"}, bundle=bundle).version == 2
        current = store.get(flow.name)
        assert current is not None and current.params == {"HOST": "b"}
        assert current.scripts == (
            {"module": "steps", "function": "go", "line": 12, "bundled": True},
        )
        assert current.scripts_dir is not None
        assert (current.scripts_dir / "steps.py").read_bytes().startswith(b"def go")
        assert (current.scripts_dir / "pkg" / "util.py").read_text() == "X = 1\n"
        assert store.bundle(current).files == bundle.files
    finally:
        store.close()


def test_attempts_deliveries_and_replays(state: StateBackend) -> None:
    state.record_failure("mb", "k", error="452 full", next_attempt=2_000_000_000.0)
    state.record_failure("mb", "k2", error="452 full", next_attempt=1_900_000_000.0)
    assert state.next_attempt_due("mb") == 1_900_000_000.0
    assert state.records("mb", ["k"])["k"].next_attempt == 2_000_000_000.0
    state.save_deliveries(
        "mb", "k", [("out", "a@x", "sent", "250 ok"), ("out", "b@x", "pending", "452")]
    )
    state.save_deliveries("mb", "k", [("out", "b@x", "refused", "550 no")])
    assert state.delivered("mb", ["k", "k2", "k"]) == {"k"}
    assert state.delivered("other", ["k"]) == set()
    assert state.deliveries("mb", "k") == [
        ("out", "a@x", "sent", "250 ok"),
        ("out", "b@x", "refused", "550 no"),
    ]
    state.record_done("mb", "k", action="dead-letter folder")
    assert state.dead_letter_count() == 1
    state.request_replay("mb", "k", message_id="<m@x>")
    assert state.replays("mb") == ["k"]
    state.take_replay("mb", "k")
    assert state.replays("mb") == [] and state.records("mb", ["k"]) == {}
    assert state.deliveries("mb", "k") == [("out", "a@x", "sent", "250 ok")]  # has it
    assert len(state.claim_id) == 12


def test_poll_failure_log_keeps_the_newest_per_poller(state: StateBackend) -> None:
    from flowrt.poll_failures import KEEP_PER_POLLER, PollFailure

    def failure(i: int, poller: str = "f:imap", flow: str = "f") -> PollFailure:
        return PollFailure(
            poller, flow, 1000.0 + i, "login", f"failure {i}", "chain", [{"level": 0}], "hint"
        )

    for i in range(KEEP_PER_POLLER + 3):
        state.record_poll_failure(failure(i))
    state.record_poll_failure(failure(0, poller="g:pop3", flow="g"))
    newest = state.poll_failures("f", limit=2)
    assert [f.summary for f in newest] == [
        f"failure {KEEP_PER_POLLER + 2}",
        f"failure {KEEP_PER_POLLER + 1}",
    ]
    assert newest[0].levels == [{"level": 0}] and newest[0].hint == "hint"
    assert len(state.poll_failures("f", limit=10_000)) == KEEP_PER_POLLER
    assert [f.flow for f in state.poll_failures(limit=1)] == ["g"]
    assert state.poll_failures("f", since=1000.0 + KEEP_PER_POLLER + 1, limit=10) == [newest[0]]
