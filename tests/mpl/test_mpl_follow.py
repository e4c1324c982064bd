"""Following the log: new entries and status changes, once each."""

from __future__ import annotations

from flowrt.mpl import MplRecorder, MplStatus, MplStore
from flowrt.mpl.follow import Follower

from .conftest import record


def test_follower_reports_new_entries_and_changes_once(store: MplStore) -> None:
    with MplRecorder(store, flush_interval=3600) as rec:
        record(rec, "before")
        running = rec.begin("running-before", "c", "f", "1", "s", ["r"])
        rec.flush()
        follower = Follower(store)
        assert follower.poll() == []  # what is already final is not news

        record(rec, "new-1")
        fresh = rec.begin("new-2", "c", "f", "1", "s", ["r"])
        rec.flush()
        got = [(s.message_id, s.status) for s in follower.poll()]
        assert got == [("new-1", MplStatus.COMPLETED), ("new-2", MplStatus.PROCESSING)]
        assert follower.poll() == []

        fresh.complete(MplStatus.FAILED)
        running.complete(MplStatus.COMPLETED)
        rec.flush()
        got = sorted((s.message_id, s.status) for s in follower.poll())
        assert got == [("new-2", MplStatus.FAILED), ("running-before", MplStatus.COMPLETED)]
        assert follower.poll() == []


def test_follower_filters_by_flow_and_status(store: MplStore) -> None:
    with MplRecorder(store, flush_interval=3600) as rec:
        follower = Follower(store, flow="orders", status=MplStatus.FAILED)
        record(rec, "a", flow="orders", status=MplStatus.COMPLETED)
        record(rec, "b", flow="orders", status=MplStatus.FAILED)
        record(rec, "c", flow="invoices", status=MplStatus.FAILED)
        pending = rec.begin("d", "c", "orders", "1", "s", ["r"])
        rec.flush()
        assert [s.message_id for s in follower.poll()] == ["b"]
        pending.fail(RuntimeError("boom"))
        rec.flush()
        assert [s.message_id for s in follower.poll()] == ["d"]


def test_follower_from_row_zero_reports_everything(store: MplStore) -> None:
    with MplRecorder(store) as rec:
        for mid in ("x", "y"):
            record(rec, mid)
    assert [s.message_id for s in Follower(store, start_row=0).poll()] == ["x", "y"]
