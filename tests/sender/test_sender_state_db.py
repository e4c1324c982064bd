"""The runtime state DB: idempotency records, lease locks, poller health."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from flowrt.errors import TenantError
from flowrt.runtime.state import MIGRATIONS, SCHEMA_VERSION, PollerHealth, StateDB

BOX = "imap:u@h/INBOX"


def test_done_record_is_found_and_post_processed_flag(state: StateDB) -> None:
    state.record_done(BOX, "uid:7:1", generation="7", message_id="a@x", action="mark-read")
    record = state.records(BOX, ["uid:7:1", "uid:7:2"])["uid:7:1"]
    assert record.done and not record.post_processed
    assert record.message_id == "a@x" and record.generation == "7"
    state.mark_post_processed(BOX, ["uid:7:1"])
    assert state.records(BOX, ["uid:7:1"])["uid:7:1"].post_processed
    assert state.records("imap:other@h/INBOX", ["uid:7:1"]) == {}


def test_failures_are_counted_and_never_undo_done(state: StateDB) -> None:
    assert state.record_failure(BOX, "k", error="E1") == 1
    assert state.record_failure(BOX, "k", error="E2") == 2
    record = state.records(BOX, ["k"])["k"]
    assert record.status == "failed" and record.attempts == 2 and record.last_error == "E2"
    state.record_done(BOX, "k")
    assert state.records(BOX, ["k"])["k"].attempts == 3
    state.record_failure(BOX, "k", error="late")  # a done mail stays done
    assert state.records(BOX, ["k"])["k"].done


def test_message_id_fallback_only_across_generations(state: StateDB) -> None:
    state.record_done(BOX, "uid:1:5", generation="1", message_id="m@x")
    state.record_failure(BOX, "uid:1:6", error="E", generation="1", message_id="f@x")
    assert state.find_by_message_ids(BOX, ["m@x"], other_generation_than="1") == set()
    found = state.find_by_message_ids(BOX, ["m@x", "f@x", "n@x", ""], other_generation_than="2")
    assert found == {"m@x"}  # only a done mail counts; an empty Message-ID never matches


def test_message_id_lookup_uses_an_index_also_after_upgrading(tmp_path: Path) -> None:
    # a state DB of schema 3 (before the index that the lookup can use), with records in it
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    for version, migration in enumerate(MIGRATIONS[:3], start=1):
        conn.executescript(migration)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.executemany(
        "INSERT INTO mail_records (mailbox, key, generation, message_id, status, created, "
        "updated) VALUES (?, ?, '1', ?, 'done', 0, 0)",
        [(BOX, f"uid:1:{i}", f"m{i}@x") for i in range(300)],
    )
    conn.commit()
    conn.close()
    with StateDB(path) as state:
        statements: list[str] = []
        state._conn.set_trace_callback(statements.append)
        found = state.find_by_message_ids(BOX, ["m7@x", "m8@x"], other_generation_than="2")
        state._conn.set_trace_callback(None)
        assert found == {"m7@x", "m8@x"}
        [lookup] = [s for s in statements if s.startswith("SELECT")]
        plan = " ".join(str(row[-1]) for row in state._conn.execute(f"EXPLAIN QUERY PLAN {lookup}"))
        # not a walk through every record of the mailbox, which each mail handed over paid
        assert "USING INDEX mail_records_by_message_id" in plan, plan


def test_many_keys_are_read_in_chunks(state: StateDB) -> None:
    for i in range(1200):
        state.record_done(BOX, f"k{i}")
    assert len(state.records(BOX, [f"k{i}" for i in range(1500)])) == 1200
    assert state.forget(BOX, [f"k{i}" for i in range(600)]) == 600
    assert len(state.keys(BOX)) == 600


def test_purge_keeps_records_of_kept_mails(state: StateDB) -> None:
    state.record_done(BOX, "moved", action="archive")
    state.record_done(BOX, "kept", action="keep")
    state.record_done(BOX, "open", action="mark-read")  # not post-processed yet
    state.mark_post_processed(BOX, ["moved", "kept"])
    assert state.purge_records(time.time() + 1) == 1
    assert sorted(state.keys(BOX)) == ["kept", "open"]


def test_lease_lock_is_exclusive_until_it_expires(state: StateDB) -> None:
    taken, lease = state.acquire_lock("box", "a", 60, info="flow-a")
    assert taken and lease.owner == "a" and lease.info == "flow-a"
    taken, holder = state.acquire_lock("box", "b", 60)
    assert not taken and holder.owner == "a"
    assert state.renew_lock("box", "a", 0.05)
    assert not state.renew_lock("box", "b", 60)
    time.sleep(0.1)
    taken, lease = state.acquire_lock("box", "b", 60)  # expired: taken over
    assert taken and lease.owner == "b"
    assert not state.renew_lock("box", "a", 60)  # a learns it lost the lease
    assert not state.release_lock("box", "a")
    assert state.release_lock("box", "b")
    assert state.locks() == []


def test_force_release(state: StateDB) -> None:
    state.acquire_lock("box", "a", 60)
    removed = state.force_release("box")
    assert removed is not None and removed.owner == "a"
    assert state.force_release("box") is None


def test_health_round_trip(state: StateDB) -> None:
    health = PollerHealth("p1", mailbox="box", last_error="E: x", consecutive_failures=2)
    state.save_health(health)
    assert state.health("p1") == [health]
    health.consecutive_failures = 0
    state.save_health(health)
    assert state.health()[0].consecutive_failures == 0


def test_two_connections_share_the_file(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.sqlite") as one, StateDB(tmp_path / "s.sqlite") as two:
        one.record_done(BOX, "k")
        assert two.records(BOX, ["k"])["k"].done
        assert one.acquire_lock("box", "a", 60)[0]
        assert not two.acquire_lock("box", "b", 60)[0]


def test_schema_version_and_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    StateDB(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(TenantError, match="schema version"):
        StateDB(path)


def test_missing_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(TenantError, match="no runtime state database"):
        StateDB(tmp_path / "absent.sqlite", create=False)
