"""What the recorder's fast paths must keep: the stored JSON of runs and steps, the order of
rows, properties and content written with their entry, and handles freed once an entry ends."""

from __future__ import annotations

import gc
import json
import sqlite3
import weakref
from pathlib import Path

from flowrt.errors import StepException
from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore, StepStatus, _schema

T0 = 1_700_000_000.123456
SENDER = "mail imap plant@mail.plant.example:143/INBOX"
RECEIVERS = ["mail smtp accounting@smtp.example.com:465"]


def _column(store: MplStore, message_id: str, column: str) -> str:
    row = store._conn.execute(
        f"SELECT {column} FROM entries WHERE message_id = ?", (message_id,)
    ).fetchone()
    return str(row[0])


def _json(value: object) -> str:
    """How the runs column was always encoded: compact JSON, non-ASCII as it is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_runs_are_stored_as_the_same_json(store: MplStore) -> None:
    with MplRecorder(store, flush_interval=3600) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS, start=T0)
        first = entry.start_run(start=T0)
        first.step("filter", "10", "", StepStatus.COMPLETED, T0 + 0.0001, T0 + 0.0003)
        first.step('set header "X-Ünï"', "11", "attachment-2", "FILTERED", T0 + 0.001, T0 + 0.002)
        first.step("script m:f", "12", "", StepStatus.FAILED, T0, T0 + 1.5, ValueError('bad "x"\n'))
        first.step("log", "13", "b", StepStatus.SKIPPED, T0 + 2, T0 + 2, "plain error text")
        first.finish(MplStatus.RETRY, stop=T0 + 2.5)
        entry.fail(StepException("script m:f failed"), MplStatus.RETRY, "script m:f (line 12)")
        second = entry.start_run(start=T0 + 3)
        second.step("filter", "10", "", StepStatus.COMPLETED, T0 + 3, T0 + 3.25)
        entry.log("info", "forwarding ☃")
        entry.complete(MplStatus.COMPLETED, end=T0 + 4)

    def us(t: float) -> int:
        return int(t * 1e6)

    def step(
        name: str,
        line: str,
        branch: str,
        status: str,
        run: float,
        a: float,
        b: float,
        error: str | None = None,
    ) -> list[object]:
        # offset from the run start and duration, in integer µs, computed as always
        return [name, line, branch, status, int((a - run) * 1e6), int((b - a) * 1e6), error]

    r2 = T0 + 3
    expected = [
        [
            1,
            us(T0),
            us(T0 + 2.5),
            "RETRY",
            [
                step("filter", "10", "", "COMPLETED", T0, T0 + 0.0001, T0 + 0.0003),
                step(
                    'set header "X-Ünï"',
                    "11",
                    "attachment-2",
                    "FILTERED",
                    T0,
                    T0 + 0.001,
                    T0 + 0.002,
                ),
                step("script m:f", "12", "", "FAILED", T0, T0, T0 + 1.5, 'ValueError: bad "x"\n'),
                step("log", "13", "b", "SKIPPED", T0, T0 + 2, T0 + 2, "plain error text"),
            ],
        ],
        [
            2,
            us(r2),
            us(T0 + 4),
            "COMPLETED",
            [step("filter", "10", "", "COMPLETED", r2, r2, T0 + 3.25)],
        ],
    ]
    assert _column(store, "m-1", "runs") == _json(expected)
    assert json.loads(_column(store, "m-1", "log_lines"))[0][1:] == ["info", "forwarding ☃"]
    stored = store.get("m-1")
    assert [s.step_id for s in stored.runs[0].steps][1] == 'set header "X-Ünï"'
    assert stored.runs[0].steps[2].error == 'ValueError: bad "x"\n'


def test_an_open_run_and_an_empty_log_are_stored_as_before(store: MplStore) -> None:
    with MplRecorder(store, flush_interval=3600) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS, start=T0)
        entry.start_run(start=T0).step("s", "1", "", "COMPLETED", T0, T0)
        rec.flush()
        assert _column(store, "m-1", "runs") == _json(
            [[1, int(T0 * 1e6), None, "PROCESSING", [["s", "1", "", "COMPLETED", 0, 0, None]]]]
        )
        assert _column(store, "m-1", "log_lines") == "[]"
        entry.complete()


def test_rows_with_different_null_columns_keep_their_order(store: MplStore) -> None:
    """Rows are written in statements per set of NULL columns; the row ids (list order for
    equal start times, and what `tail` follows) still follow the order of the batch."""
    with MplRecorder(store, flush_interval=3600) as rec:
        for i in range(40):
            entry = rec.begin(f"m-{i:02d}", "c", "f", "1", SENDER, RECEIVERS, start=T0)
            if i % 3 == 0:
                entry.set_application_id(f"app-{i}")
            if i % 5 == 0:
                entry.fail(StepException("x"), MplStatus.FAILED, "step")
            elif i % 7 == 0:
                entry.filtered("no match")
            elif i % 2 == 0:
                entry.complete()
    ids = [s.message_id for s in store.list_entries(limit=None)]
    assert ids == [f"m-{i:02d}" for i in reversed(range(40))]
    assert store.get("m-03").application_id == "app-3"
    assert store.get("m-05").error is not None and store.get("m-05").status is MplStatus.FAILED
    assert store.get("m-07").filter_note == "no match"
    assert store.get("m-01").log_end is None and store.get("m-01").status is MplStatus.PROCESSING


def test_write_batch_takes_rows_with_none_in_any_nullable_column(store: MplStore) -> None:
    width = len(_schema.ENTRY_COLUMNS)
    nullable = [_schema.ENTRY_COLUMNS.index(c) for c in _schema.NULLABLE_COLUMNS]
    rows = []
    for i in range(300):  # every pattern of NULLs, in runs of different lengths
        row: list[object] = [f"m-{i:03d}", "c", "app", "f", "1", "s", "[]", "COMPLETED"]
        row += [T0 + i, T0 + i + 1, "info", 0, "note", "chain", "[]", "hint", "step", "[]", "[]"]
        row += ["Invoice", "billing@example.com"]  # subject, mail_from (schema V2)
        row += ["node-a"]  # node (schema V3)
        assert len(row) == width
        for bit, column in enumerate(nullable):
            if (i // 3) >> bit & 1:
                row[column] = None
        rows.append(tuple(row))
    store.write_batch(rows)
    stored = store._conn.execute(
        f"SELECT {', '.join(_schema.ENTRY_COLUMNS)} FROM entries ORDER BY id"
    ).fetchall()
    assert stored == rows


def test_properties_and_content_are_written_with_the_entry(tmp_path: Path) -> None:
    store = MplStore(tmp_path / "mpl.sqlite")
    with MplRecorder(store, level=LogLevel.TRACE, flush_interval=3600, owns_store=True) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS, start=T0)
        entry.custom_property("customer", "acme")
        run = entry.start_run(start=T0)
        run.step("s", "1", "", "COMPLETED", T0, T0, content=({"Subject": "x"}, "body"))
        entry.complete()
        rec.flush()
        with sqlite3.connect(tmp_path / "mpl.sqlite") as reader:
            assert reader.execute("SELECT count(*) FROM properties").fetchone() == (1,)
            assert reader.execute("SELECT count(*) FROM contents").fetchone() == (1,)
        entry.custom_property("order", "7")  # after the entry was written: the next flush
    with MplStore(tmp_path / "mpl.sqlite") as again:
        stored = again.get("m-1")
        assert stored.custom_properties == {"customer": ("acme",), "order": ("7",)}
        assert stored.runs[0].steps[0].content is not None


def test_an_ended_entry_does_not_keep_its_handles(store: MplStore) -> None:
    """The buffer keeps an ended entry's row, not its handles: they are freed as soon as the
    engine drops them, without waiting for the cyclic garbage collector."""
    with MplRecorder(store, flush_interval=3600) as rec:
        gc.disable()
        try:
            entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS)
            run = entry.start_run()
            run.step("s", "1", "", "COMPLETED", T0, T0)
            entry.complete()
            handle = weakref.ref(entry)
            del entry, run
            assert handle() is None  # and with it its runs
            assert rec.pending == 1
        finally:
            gc.enable()
    assert store.get("m-1").status is MplStatus.COMPLETED


def test_checkpoints_are_left_to_the_recorder_thread(store: MplStore) -> None:
    def pages() -> int:
        return int(store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    assert pages() == 1000
    rec = MplRecorder(store, flush_interval=0.01)
    assert pages() > 1000  # the writes checkpoint only as a safety net
    for i in range(200):
        rec.begin(f"m-{i}", "c", "f", "1", SENDER, RECEIVERS).complete()
    rec.close()
    store.checkpoint()
    assert pages() == 1000  # a store the recorder does not own gets the default back
    assert store.count() == 200
