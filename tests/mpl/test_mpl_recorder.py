"""The recorder: what each level keeps, batching and flushing, errors, trace content."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from flowrt.errors import (
    MailConnectException,
    MplError,
    SSLHandshakeException,
    StepException,
    chain_levels,
    render_chain,
)
from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore, StepStatus
from flowrt.mpl.model import CONTENT_LIMIT

from .conftest import record

T0 = 1_700_000_000.0
SENDER = "mail imap plant@mail.plant.example:143/INBOX"
RECEIVERS = ["mail smtp accounting@smtp.example.com:465", "mail smtp audit@smtp.example.com:465"]


def _message(rec: MplRecorder, message_id: str = "m-1") -> None:
    """A message that goes through every call of the API once."""
    entry = rec.begin(message_id, "corr-1", "invoice-forward", 3, SENDER, RECEIVERS, start=T0)
    entry.custom_property("customer", "a@example.com")
    entry.custom_property("customer", "b@example.com")
    run = entry.start_run(start=T0)
    run.step(
        "step1",
        "12",
        "",
        StepStatus.COMPLETED,
        T0 + 0.001,
        T0 + 0.002,
        content=({"Subject": "Invoice 42"}, "body after step1"),
    )
    run.step("step2", "13", "attachment-2", "COMPLETED", T0 + 0.002, T0 + 0.0045)
    entry.log("info", "forwarding Invoice 42")
    entry.log("debug", "a debug line")
    entry.log("trace", "a trace line")
    run.finish(MplStatus.COMPLETED, stop=T0 + 0.005)
    entry.complete(MplStatus.COMPLETED, end=T0 + 0.006)


def test_info_keeps_entry_runs_steps_and_info_lines(store: MplStore) -> None:
    with MplRecorder(store, level=LogLevel.INFO) as rec:
        _message(rec)
    entry = store.get("m-1")
    assert entry.correlation_id == "corr-1"
    assert entry.flow == "invoice-forward"
    assert entry.flow_version == "3"
    assert entry.sender == SENDER
    assert entry.receivers == tuple(RECEIVERS)
    assert entry.status is MplStatus.COMPLETED
    assert entry.log_level is LogLevel.INFO
    assert entry.log_start == datetime.fromtimestamp(T0, UTC)
    assert entry.duration_ms == pytest.approx(6.0, abs=0.01)
    assert entry.custom_properties == {"customer": ("a@example.com", "b@example.com")}
    assert entry.simulation is False
    assert entry.error is None
    [run] = entry.runs
    assert (run.number, run.status) == (1, MplStatus.COMPLETED)
    assert run.duration_ms == pytest.approx(5.0, abs=0.01)
    first, second = run.steps
    assert (first.step_id, first.model_step_id, first.branch) == ("step1", "12", "")
    assert first.status is StepStatus.COMPLETED
    assert first.duration_ms == pytest.approx(1.0, abs=0.01)
    assert (first.start - run.start).total_seconds() == pytest.approx(0.001, abs=2e-6)
    assert first.content is None  # content only at trace
    assert second.branch == "attachment-2"
    assert second.duration_ms == pytest.approx(2.5, abs=0.01)
    assert [(line.level, line.text) for line in entry.log] == [("info", "forwarding Invoice 42")]


def test_none_keeps_a_minimal_entry(store: MplStore) -> None:
    with MplRecorder(store, level=LogLevel.NONE) as rec:
        _message(rec)
        failing = rec.begin("m-2", "corr-2", "invoice-forward", "3", SENDER, RECEIVERS)
        failing.start_run().step("step1", "12", "", StepStatus.FAILED, T0, T0)
        failing.fail(StepException("bad value"), MplStatus.FAILED, "step1")
    entry = store.get("m-1")
    assert entry.status is MplStatus.COMPLETED
    assert entry.log_end is not None
    assert entry.runs == ()
    assert entry.log == ()
    assert entry.custom_properties == {"customer": ("a@example.com", "b@example.com")}
    failed = store.get("m-2")
    assert failed.runs == ()
    assert failed.error is not None
    assert failed.error.chain == "StepException: bad value"
    assert failed.error.failed_step == "step1"


def test_debug_adds_debug_lines_but_no_content(store: MplStore) -> None:
    with MplRecorder(store, level=LogLevel.DEBUG) as rec:
        _message(rec)
    entry = store.get("m-1")
    assert [line.level for line in entry.log] == ["info", "debug"]
    assert all(step.content is None for step in entry.runs[0].steps)


def test_trace_adds_content_and_trace_lines(store: MplStore) -> None:
    with MplRecorder(store, level=LogLevel.TRACE) as rec:
        _message(rec)
    entry = store.get("m-1")
    assert [line.level for line in entry.log] == ["info", "debug", "trace"]
    content = entry.runs[0].steps[0].content
    assert content is not None
    assert content.headers == (("Subject", "Invoice 42"),)
    assert content.body == "body after step1"
    assert content.truncated is False
    assert entry.runs[0].steps[1].content is None  # none was given


def test_level_can_be_set_per_entry(store: MplStore) -> None:
    with MplRecorder(store, level=LogLevel.NONE) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS, level=LogLevel.TRACE)
        assert entry.traces
        entry.start_run().step("s", "1", "", StepStatus.COMPLETED, T0, T0, content=({}, "x"))
        entry.complete()
    assert store.get("m-1").runs[0].steps[0].content is not None


def test_trace_content_is_capped_and_marked(store: MplStore) -> None:
    body = "é" * CONTENT_LIMIT  # two bytes each in UTF-8: twice the limit
    headers = [("Subject", "big"), ("Authorization", "Basic c2VjcmV0"), ("X-Api-Key", "k")]
    with MplRecorder(store, level=LogLevel.TRACE) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS)
        run = entry.start_run()
        run.step("s1", "1", "", StepStatus.COMPLETED, T0, T0, content=(headers, body))
        run.step("s2", "2", "", StepStatus.COMPLETED, T0, T0, content=({}, body.encode()))
        run.step("s3", "3", "", StepStatus.COMPLETED, T0, T0, content=({}, "small"))
        entry.complete()
    steps = store.get("m-1").runs[0].steps
    first = steps[0].content
    assert first is not None
    assert first.truncated is True
    assert first.size > CONTENT_LIMIT
    kept = sum(len(n) + len(v) + 4 for n, v in first.headers) + len(first.body.encode())
    assert kept <= CONTENT_LIMIT
    assert set(first.body) == {"é"}  # cut on a character boundary
    assert dict(first.headers)["Authorization"] == "***"  # secrets never reach the MPL
    assert dict(first.headers)["X-Api-Key"] == "***"
    assert dict(first.headers)["Subject"] == "big"
    second = steps[1].content
    assert second is not None and second.truncated and len(second.body.encode()) <= CONTENT_LIMIT
    third = steps[2].content
    assert third is not None and not third.truncated and third.body == "small"


def test_chain_levels_and_hint_are_kept(store: MplStore) -> None:
    hint = "the tenant keystore has no certificate for CN=Example Root CA"
    try:
        try:
            raise SSLHandshakeException("PKIX path building failed")
        except SSLHandshakeException as cause:
            raise MailConnectException(
                "Could not connect to SMTP host: smtp.example.com, port: 465;", hint=hint
            ) from cause
    except MailConnectException as exc:
        error = exc
    with MplRecorder(store) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS)
        entry.start_run().step("step4", "20", "", StepStatus.FAILED, T0, T0, error=error)
        entry.fail(error, MplStatus.FAILED, failed_step="step4")
    stored = store.get("m-1")
    assert stored.status is MplStatus.FAILED
    assert stored.error is not None
    assert stored.error.chain == render_chain(error)
    assert "nested exception is:" in stored.error.chain
    assert stored.error.levels == tuple(chain_levels(error))
    assert stored.error.hint == hint
    assert stored.error.failed_step == "step4"
    assert stored.runs[0].status is MplStatus.FAILED  # the open run was closed
    assert stored.runs[0].steps[0].error == (
        "MailConnectException: Could not connect to SMTP host: smtp.example.com, port: 465;"
    )


def test_foreign_causes_keep_their_names(store: MplStore) -> None:
    try:
        try:
            int("x")
        except ValueError as cause:
            raise StepException("script step4 failed") from cause
    except StepException as exc:
        error = exc
    with MplRecorder(store) as rec:
        rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS).fail(error)
    stored = store.get("m-1").error
    assert stored is not None
    assert [level.type for level in stored.levels] == ["StepException", "ValueError"]
    assert stored.hint is None


def test_retry_then_success_keeps_both_runs_and_the_error(store: MplStore) -> None:
    with MplRecorder(store) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS)
        first = entry.start_run()
        entry.fail(MailConnectException("connection reset"), MplStatus.RETRY, "step5")
        assert entry.log_end is None
        assert first.status is MplStatus.PROCESSING  # RETRY does not close the run
        first.finish(MplStatus.RETRY)
        rec.flush()
        assert store.get("m-1").status is MplStatus.RETRY
        second = entry.start_run()
        second.step("step5", "30", "", StepStatus.COMPLETED, T0, T0)
        second.finish(MplStatus.COMPLETED)
        entry.complete()
    stored = store.get("m-1")
    assert stored.status is MplStatus.COMPLETED
    assert [(r.number, r.status) for r in stored.runs] == [
        (1, MplStatus.RETRY),
        (2, MplStatus.COMPLETED),
    ]
    assert stored.error is not None and stored.error.failed_step == "step5"


def test_filtered_completes_with_a_note(store: MplStore) -> None:
    with MplRecorder(store) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS, simulation=True)
        entry.start_run().step("step1", "9", "", StepStatus.FILTERED, T0, T0)
        entry.filtered("Subject does not match (?i)invoice")
    stored = store.get("m-1")
    assert stored.status is MplStatus.COMPLETED
    assert stored.filter_note == "Subject does not match (?i)invoice"
    assert stored.simulation is True
    assert stored.runs[0].steps[0].status is StepStatus.FILTERED


def test_nothing_is_written_before_a_flush_then_all_in_one_go(store: MplStore) -> None:
    rec = MplRecorder(store, batch_size=10_000, flush_interval=3600)
    try:
        for i in range(500):
            record(rec, f"m-{i:04d}", start=T0 + i)
        assert store.count() == 0
        assert rec.pending == 500
        rec.flush()
        assert store.count() == 500
        assert rec.pending == 0
        assert rec.written == 500  # begin and end in one batch: one row write each
    finally:
        rec.close()


def test_close_flushes_what_is_buffered(store: MplStore) -> None:
    rec = MplRecorder(store, batch_size=10_000, flush_interval=3600)
    for i in range(100):
        record(rec, f"m-{i:03d}")
    rec.close()
    assert store.count() == 100
    rec.close()  # idempotent
    with pytest.raises(MplError, match="closed"):
        rec.begin("late", "c", "f", "1", SENDER, RECEIVERS)


def test_the_call_that_fills_a_batch_writes_it(store: MplStore) -> None:
    with MplRecorder(store, batch_size=50, flush_interval=3600) as rec:
        for i in range(49):
            rec.begin(f"m-{i:02d}", "c", "f", "1", SENDER, RECEIVERS)
        assert store.count() == 0
        rec.begin("m-49", "c", "f", "1", SENDER, RECEIVERS)
        assert store.count() == 50  # no waiting for the interval
        assert rec.pending == 0


def test_a_processing_entry_shows_within_the_flush_interval(store: MplStore) -> None:
    with MplRecorder(store, flush_interval=0.05) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS)
        assert _eventually(lambda: store.count() == 1, timeout=2.0)
        assert store.get("m-1").status is MplStatus.PROCESSING
        row_id = store.last_row_id()
        entry.complete(MplStatus.ESCALATED)
        assert _eventually(lambda: store.get("m-1").status is MplStatus.ESCALATED)
        assert store.last_row_id() == row_id  # rewritten in place, not a second row
        assert store.count() == 1


def test_properties_added_between_flushes_are_written_once(store: MplStore) -> None:
    with MplRecorder(store, flush_interval=3600) as rec:
        entry = rec.begin("m-1", "c", "f", "1", SENDER, RECEIVERS)
        entry.custom_property("order", "1")
        rec.flush()
        entry.custom_property("order", "2")
        rec.flush()
        entry.custom_property("customer", "x")
        entry.complete()
    assert store.get("m-1").custom_properties == {"order": ("1", "2"), "customer": ("x",)}


def test_pending_entries_stay_below_the_batch_size(store: MplStore) -> None:
    with MplRecorder(store, batch_size=5, flush_interval=3600) as rec:
        for i in range(1000):
            record(rec, f"m-{i:04d}", steps=1)
            assert rec.pending < 5
    assert store.count() == 1000


def test_failing_writes_keep_entries_until_max_pending_then_raise(
    store: MplStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = store.write_batch
    broken = {"on": True}

    def write(*args: object, **kwargs: object) -> None:
        if broken["on"]:
            raise MplError("database or disk is full")
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_batch", write)
    rec = MplRecorder(store, batch_size=5, max_pending=20, flush_interval=0.01)
    try:
        with pytest.raises(MplError, match=r"disk is full|failing"):
            for i in range(1000):
                rec.begin(f"m-{i:04d}", "c", "f", "1", SENDER, RECEIVERS)
                time.sleep(0.001)
        assert 20 <= rec.pending <= i + 1
        broken["on"] = False
        rec.flush()
        assert store.count() == i + 1  # nothing was lost
    finally:
        broken["on"] = False
        rec.close()


def test_a_failed_write_is_retried_and_nothing_is_lost(
    store: MplStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = store.write_batch
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise MplError("disk full")
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_batch", flaky)
    with MplRecorder(store, flush_interval=3600) as rec:
        record(rec, "m-1")
        with pytest.raises(MplError, match="disk full"):
            rec.flush()
        assert rec.pending == 1
        record(rec, "m-2")
        rec.flush()
    assert {s.message_id for s in store.list_entries()} == {"m-1", "m-2"}


def test_bad_statuses_are_refused_at_the_call(recorder: MplRecorder) -> None:
    entry = recorder.begin("m-1", "c", "f", "1", SENDER, RECEIVERS)
    with pytest.raises(ValueError):
        entry.complete("DONE")
    with pytest.raises(ValueError):
        entry.start_run().step("s", "1", "", "OK", T0, T0)


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False
