"""The store: list filters and order, lookups by ID, purge, retention, schema, JSON form."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowrt.errors import MplError
from flowrt.mpl import MplRecorder, MplStatus, MplStore, MplSummary
from flowrt.mpl._schema import SCHEMA_VERSION

from .conftest import record

T0 = 1_700_000_000.0


def at(offset: float) -> datetime:
    return datetime.fromtimestamp(T0 + offset, UTC)


@pytest.fixture
def filled(store: MplStore) -> MplStore:
    """Six entries, one a minute apart (m-0 oldest), over two flows and three statuses."""
    plan = [
        ("m-0", "invoice-forward", MplStatus.COMPLETED, [("customer", "acme")]),
        ("m-1", "invoice-forward", MplStatus.FAILED, [("customer", "acme"), ("order", "7")]),
        ("m-2", "orders", MplStatus.COMPLETED, [("customer", "globex")]),
        ("m-3", "orders", MplStatus.FAILED, [("order", "7")]),
        ("m-4", "invoice-forward", MplStatus.RETRY, []),
        ("m-5", "orders", MplStatus.COMPLETED, [("customer", "acme")]),
    ]
    with MplRecorder(store, flush_interval=3600) as rec:
        for i, (mid, flow, status, props) in enumerate(plan):
            record(rec, mid, flow=flow, status=status, start=T0 + 60 * i, properties=props)
    return store


def ids(summaries: list[MplSummary]) -> list[str]:
    return [s.message_id for s in summaries]


def test_list_is_newest_first(filled: MplStore) -> None:
    assert ids(filled.list_entries()) == ["m-5", "m-4", "m-3", "m-2", "m-1", "m-0"]


def test_same_start_time_orders_by_insertion(store: MplStore) -> None:
    with MplRecorder(store) as rec:
        for mid in ("a", "b", "c"):
            record(rec, mid, start=T0)
    assert ids(store.list_entries()) == ["c", "b", "a"]


def test_filter_by_flow(filled: MplStore) -> None:
    assert ids(filled.list_entries(flow="orders")) == ["m-5", "m-3", "m-2"]
    assert filled.list_entries(flow="nope") == []


def test_filter_by_status(filled: MplStore) -> None:
    assert ids(filled.list_entries(status=MplStatus.FAILED)) == ["m-3", "m-1"]
    assert ids(filled.list_entries(status="RETRY")) == ["m-4"]


def test_filter_by_since_and_until(filled: MplStore) -> None:
    assert ids(filled.list_entries(since=at(180))) == ["m-5", "m-4", "m-3"]
    assert ids(filled.list_entries(until=at(60))) == ["m-1", "m-0"]
    assert ids(filled.list_entries(since=at(60), until=at(120))) == ["m-2", "m-1"]


def test_filter_by_message_id_prefix(filled: MplStore) -> None:
    assert ids(filled.list_entries(message_id="m-3")) == ["m-3"]
    assert ids(filled.list_entries(message_id="m-")) == ids(filled.list_entries())


def test_filter_by_custom_properties(filled: MplStore) -> None:
    assert ids(filled.list_entries(properties=[("customer", "acme")])) == ["m-5", "m-1", "m-0"]
    assert ids(filled.list_entries(properties=[("order", "7")])) == ["m-3", "m-1"]
    both = [("customer", "acme"), ("order", "7")]
    assert ids(filled.list_entries(properties=both)) == ["m-1"]


def test_filters_combine_and_limit(filled: MplStore) -> None:
    got = filled.list_entries(flow="invoice-forward", status=MplStatus.COMPLETED)
    assert ids(got) == ["m-0"]
    assert ids(filled.list_entries(limit=2)) == ["m-5", "m-4"]
    assert len(filled.list_entries(limit=None)) == 6


def test_summary_fields(filled: MplStore) -> None:
    [failed] = filled.list_entries(message_id="m-3")
    assert failed.flow == "orders"
    assert failed.status is MplStatus.FAILED
    assert failed.log_start == at(180)
    assert failed.duration_ms == pytest.approx(10.0)
    assert failed.correlation_id == "corr-m-3"


def test_list_queries_use_an_index(filled: MplStore) -> None:
    conn = filled._conn
    for where in ("status = 'FAILED'", "flow = 'orders'", "1"):
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM entries WHERE {where} "
            "ORDER BY log_start DESC, id DESC LIMIT 50"
        ).fetchall()
        text = " ".join(str(row[-1]) for row in plan)
        assert "USING INDEX" in text, text
        assert "TEMP B-TREE" not in text, text


def test_get_by_full_id_and_unique_prefix(store: MplStore) -> None:
    with MplRecorder(store) as rec:
        record(rec, "0190f2a4-aaaa-7000-8000-000000000001")
        record(rec, "0190f2a4-aaaa-7000-8000-000000000002")
        record(rec, "0190f2a4-bbbb-7000-8000-000000000003")
    assert store.get("0190f2a4-aaaa-7000-8000-000000000002").message_id.endswith("2")
    assert store.get("0190f2a4-bb").message_id.endswith("3")
    with pytest.raises(MplError, match="more than one entry") as ambiguous:
        store.get("0190f2a4-aaaa")
    assert ambiguous.value.hint and "more characters" in ambiguous.value.hint
    with pytest.raises(MplError, match="no MPL entry") as short:
        store.get("0190f2")  # shorter than 8 characters: only an exact ID
    assert short.value.hint and "at least 8" in short.value.hint
    with pytest.raises(MplError, match="no MPL entry"):
        store.get("ffffffff")
    assert store.find("0190f2a4-bb") is None  # find is exact only


def test_purge_removes_what_ended_before_the_cutoff(filled: MplStore) -> None:
    # m-4 is in RETRY (not ended) and started after the cutoff: it is kept.
    removed = filled.purge(at(150))
    assert removed == 3  # m-0, m-1, m-2 ended before the cutoff
    assert ids(filled.list_entries()) == ["m-5", "m-4", "m-3"]
    assert filled.get("m-3").custom_properties == {"order": ("7",)}
    count = filled._conn.execute("SELECT count(*) FROM properties").fetchone()[0]
    assert count == 2  # the purged entries' properties went with them


def test_purge_removes_unfinished_leftovers_that_started_before_the_cutoff(
    store: MplStore,
) -> None:
    with MplRecorder(store) as rec:
        rec.begin("stuck", "c", "f", "1", "s", ["r"], start=T0)  # never completed
        rec.begin("running", "c", "f", "1", "s", ["r"], start=T0 + 3600)
    assert store.purge(at(60)) == 1
    assert ids(store.list_entries()) == ["running"]


def test_purge_works_in_batches(store: MplStore) -> None:
    with MplRecorder(store) as rec:
        for i in range(25):
            record(rec, f"m-{i:02d}", start=T0 + i, properties=[("n", str(i))])
    assert store.purge(at(20), batch_size=4) == 20
    assert store.count() == 5
    assert store.purge(at(20), batch_size=4) == 0


def test_retention_default_set_and_applied(store: MplStore) -> None:
    assert store.retention() == timedelta(days=30)
    assert store.stored_retention() is None
    now = datetime(2024, 6, 1, tzinfo=UTC)
    with MplRecorder(store) as rec:
        record(rec, "old", start=(now - timedelta(days=10)).timestamp())
        record(rec, "new", start=(now - timedelta(days=2)).timestamp())
    assert store.purge_expired(now=now) == 0
    store.set_retention(timedelta(days=7))
    assert store.retention() == timedelta(days=7)
    assert store.purge_expired(now=now) == 1
    assert ids(store.list_entries()) == ["new"]
    with pytest.raises(MplError):
        store.set_retention(timedelta(0))


def test_retention_survives_reopening(tmp_path: Path) -> None:
    with MplStore(tmp_path / "mpl.sqlite") as first:
        first.set_retention(timedelta(hours=12))
    with MplStore(tmp_path / "mpl.sqlite") as second:
        assert second.retention() == timedelta(hours=12)


def test_database_is_wal_and_versioned(store: MplStore) -> None:
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.schema_version == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mpl.sqlite"
    MplStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(MplError, match="schema version") as raised:
        MplStore(path)
    assert raised.value.hint


def test_a_file_that_is_not_a_database_is_an_mpl_error(tmp_path: Path) -> None:
    path = tmp_path / "mpl.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MplError, match=r"mpl\.sqlite") as raised:
        MplStore(path)
    assert raised.value.hint and "damaged" in raised.value.hint


def test_create_false_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(MplError, match="no MPL database"):
        MplStore(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_to_dict_is_stable_json(filled: MplStore) -> None:
    entry = filled.get("m-1")
    data = entry.to_dict()
    assert list(data) == [
        "message_id",
        "correlation_id",
        "application_id",
        "flow",
        "flow_version",
        "sender",
        "receivers",
        "status",
        "log_start",
        "log_end",
        "duration_ms",
        "log_level",
        "simulation",
        "filter_note",
        "custom_properties",
        "error",
        "runs",
        "log",
        "subject",  # added with schema V2 (issue 20), after the keys there were
        "from",
        "node",  # added with schema V3 (issue 18): the runtime node, null without one
    ]
    assert data["node"] is None
    assert data["log_start"] == "2023-11-14T22:14:20.000000Z"
    assert data["custom_properties"] == {"customer": ["acme"], "order": ["7"]}
    assert data["runs"][0]["steps"][0]["status"] == "FAILED"
    text = json.dumps(data)
    assert json.dumps(filled.get("m-1").to_dict()) == text  # same entry, same text
    assert json.loads(text) == data


def test_a_database_of_schema_1_gains_subject_and_sender(tmp_path: Path) -> None:
    from flowrt.mpl import _schema

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_schema.MIGRATIONS[0])
    columns = _schema.ENTRY_COLUMNS[: _schema.ENTRY_COLUMNS.index("subject")]
    conn.execute(
        f"INSERT INTO entries ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        ("old-1", "c", None, "f", "1", "s", "[]", "COMPLETED", 1.0, 2.0, "info", 0)
        + (None,) * 5
        + ("[]", "[]"),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    with MplStore(path) as store:
        (summary,) = store.list_entries()
        assert (summary.message_id, summary.subject, summary.mail_from) == ("old-1", "", "")
