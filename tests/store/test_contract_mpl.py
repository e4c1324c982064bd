"""The MPL contract: what `flowrt mpl` users see is the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from flowrt.errors import MplError
from flowrt.mpl.model import LogLevel, MplStatus
from flowrt.mpl.recorder import MplRecorder
from flowrt.store import MplBackend, open_mpl
from flowrt.tenant import Tenant


@pytest.fixture
def store(tenant: Tenant) -> Iterator[MplBackend]:
    opened = open_mpl(tenant)
    assert opened is not None
    with opened:
        yield opened


def _record(store: MplBackend, count: int, *, start: float = 1_700_000_000.0) -> list[str]:
    ids = []
    with MplRecorder(store, level=LogLevel.INFO) as recorder:
        for i in range(count):
            mid = f"msg-{i:05d}-abcdef"
            entry = recorder.begin(
                mid,
                f"corr-{i}",
                "flow-a" if i % 2 else "flow-b",
                1,
                "imap",
                ["smtp"],
                start=start + i,
            )
            entry.custom_property("customer", f"c{i % 3}")
            if i % 5 == 0:
                entry.fail(RuntimeError(f"boom {i}"), failed_step="set")
            else:
                entry.complete(MplStatus.COMPLETED, end=start + i + 0.5)
            ids.append(mid)
    return ids


def test_list_filters_and_orders_newest_first(store: MplBackend) -> None:
    _record(store, 30)
    failed = store.list_entries(status="FAILED", limit=50)
    assert [s.message_id for s in failed] == [f"msg-{i:05d}-abcdef" for i in (25, 20, 15, 10, 5, 0)]
    assert all(s.failed_step == "set" for s in failed)
    assert len(store.list_entries(flow="flow-a", limit=None)) == 15
    assert [s.message_id for s in store.list_entries(limit=2)] == [
        "msg-00029-abcdef",
        "msg-00028-abcdef",
    ]
    by_prop = store.list_entries(properties=[("customer", "c1")], status="FAILED")
    assert [s.message_id for s in by_prop] == ["msg-00025-abcdef", "msg-00010-abcdef"]
    since = dt.datetime.fromtimestamp(1_700_000_027, dt.UTC)
    assert len(store.list_entries(since=since)) == 3
    assert store.count() == 30
    assert len(store.list_entries(simulation=False, limit=None)) == 30
    assert store.list_entries(simulation=True) == []


def test_show_by_id_and_prefix(store: MplBackend) -> None:
    _record(store, 12)
    entry = store.get("msg-00010")
    assert entry.message_id == "msg-00010-abcdef"
    assert entry.status is MplStatus.FAILED
    assert entry.error is not None and "boom 10" in entry.error.chain
    assert entry.custom_properties == {"customer": ("c1",)}
    with pytest.raises(MplError, match="more than one"):
        store.get("msg-0000")
    with pytest.raises(MplError, match="no MPL entry"):
        store.get("nothing-like-it")


def test_tail_and_unfinished(store: MplBackend) -> None:
    _record(store, 3)
    last = store.last_row_id()
    with MplRecorder(store) as recorder:
        recorder.begin("open-one-xxxxxxxx", "c", "flow-a", 1, "imap", ["smtp"])
    after = store.rows_after(last)
    assert [s.message_id for _, s in after] == ["open-one-xxxxxxxx"]
    assert [s.message_id for s in store.unfinished()] == ["open-one-xxxxxxxx"]
    found = store.summaries(["open-one-xxxxxxxx", "msg-00001-abcdef", "gone"])
    assert set(found) == {"open-one-xxxxxxxx", "msg-00001-abcdef"}


def test_purge_in_batches_and_retention(store: MplBackend) -> None:
    _record(store, 25)
    cutoff = dt.datetime.fromtimestamp(1_700_000_010, dt.UTC)
    # the failed entries ended now (fail() stamps the time): only what ended is purged
    assert store.count_purgeable(cutoff) == 8
    assert store.purge(cutoff, batch_size=4) == 8
    assert store.count() == 17
    assert store.stored_retention() is None
    store.set_retention(dt.timedelta(days=2))
    assert store.retention() == dt.timedelta(days=2)
    with pytest.raises(MplError, match="positive"):
        store.set_retention(dt.timedelta(0))
    assert store.purge_expired() == 12


def test_pages_and_counts(store: MplBackend) -> None:
    _record(store, 12)
    first, cursor = store.page(limit=5)
    assert [s.message_id[:9] for s in first] == [f"msg-{i:05d}" for i in (11, 10, 9, 8, 7)]
    assert cursor is not None
    second, cursor = store.page(limit=5, after=cursor)
    assert [s.message_id[:9] for s in second] == [f"msg-{i:05d}" for i in (6, 5, 4, 3, 2)]
    last, cursor = store.page(limit=5, after=cursor)
    assert len(last) == 2 and cursor is None
    found, _ = store.page(text="CORR-1", limit=50)  # case-insensitive, in correlation IDs
    assert {s.correlation_id for s in found} == {"corr-1", "corr-10", "corr-11"}
    with pytest.raises(MplError, match="not a page cursor"):
        store.page(after="nonsense")
    counts = store.counts()
    assert counts[("flow-a", "FAILED")] == 1 and counts[("flow-b", "FAILED")] == 2
    assert sum(counts.values()) == 12


def test_entries_carry_their_node_and_only_a_gone_nodes_are_abandoned(store: MplBackend) -> None:
    for node in ("node-a", "node-b"):
        with MplRecorder(store, node=node) as recorder:
            recorder.begin(f"open-{node}-xxxxxxxx", "c", "flow-a", 1, "imap", ["smtp"])
    # worker processes (`workers N`) name their node after it: NODE/FLOW worker k/N
    for node in ("node-a", "node-ab"):
        with MplRecorder(store, node=f"{node}/flow-a worker 2/2") as recorder:
            recorder.begin(f"open-{node}-w2-xxxxxxxx", "c", "flow-a", 1, "imap", ["smtp"])
    with MplRecorder(store) as recorder:  # a tenant of one runtime: no node
        recorder.begin("open-solo-xxxxxxxx", "c", "flow-a", 1, "imap", ["smtp"])

    assert store.abandon_unfinished("gone", nodes=[]) == 0
    assert store.abandon_unfinished("node-a died", nodes=["node-a"]) == 2  # and its worker's
    assert store.get("open-node-a-w2-xxxxxxxx").status is MplStatus.ABANDONED
    assert store.get("open-node-ab-w2-xxxxxxxx").status is MplStatus.PROCESSING
    assert store.abandon_unfinished("a worker died", nodes=["node-ab/flow-a worker 2/2"]) == 1
    gone = store.get("open-node-a-xxxxxxxx")
    assert (gone.status, gone.node) == (MplStatus.ABANDONED, "node-a")
    assert gone.error is not None and gone.error.chain == "ABANDONED: node-a died"
    assert gone.to_dict()["node"] == "node-a"
    assert store.get("open-node-b-xxxxxxxx").status is MplStatus.PROCESSING
    assert store.get("open-solo-xxxxxxxx").node == ""
    assert {s.message_id: s.node for s in store.list_entries()} == {
        "open-node-a-xxxxxxxx": "node-a",
        "open-node-b-xxxxxxxx": "node-b",
        "open-node-a-w2-xxxxxxxx": "node-a/flow-a worker 2/2",
        "open-node-ab-w2-xxxxxxxx": "node-ab/flow-a worker 2/2",
        "open-solo-xxxxxxxx": "",
    }
    # without nodes (one runtime per tenant, at its start): everything unfinished
    assert store.abandon_unfinished("the runtime stopped") == 2
    assert not store.unfinished()


def test_settled_row_id_never_passes_a_row_that_may_still_appear(store: MplBackend) -> None:
    _record(store, 3)
    last = store.last_row_id()
    settled = store.settled_row_id(0)
    # SQLite: every row is in for good as soon as it is seen; PostgreSQL: rows written in the
    # last seconds may still get company below their ids (several writers at once)
    assert settled in (0, last)
    assert settled == (last if store.__class__.__name__ == "MplStore" else 0)
