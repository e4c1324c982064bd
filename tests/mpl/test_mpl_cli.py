"""`flowrt mpl list|show|tail|purge|retention` against a tenant directory."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from flowrt.errors import MailConnectException, SSLHandshakeException, render_chain
from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore, StepStatus

from .conftest import record, run_cli

HOUR = 3600.0
HINT = (
    "the tenant keystore has no certificate for CN=Example Root CA; run `flowrt test smtp "
    "smtp.example.com:465 --protection smtps --import`"
)
FAILED_ID = "0190f2a4-0000-7000-8000-00000000000f"


def _chained_error() -> MailConnectException:
    try:
        try:
            raise SSLHandshakeException(
                "PKIX path building failed: unable to find valid certification path to "
                "requested target (server chain root: CN=Example Root CA)"
            )
        except SSLHandshakeException as cause:
            raise MailConnectException(
                "Could not connect to SMTP host: smtp.example.com, port: 465;", hint=HINT
            ) from cause
    except MailConnectException as exc:
        return exc


@pytest.fixture
def populated(tenant: Path) -> Path:
    """Entries 3 h, 2 h and 1 h old, and a failed one 30 min old with a chain and a hint."""
    now = time.time()
    with MplRecorder(MplStore(tenant / "mpl.sqlite"), owns_store=True) as rec:
        record(rec, "0190f2a4-0000-7000-8000-000000000001", start=now - 3 * HOUR, flow="orders")
        record(
            rec,
            "0190f2a4-0000-7000-8000-000000000002",
            start=now - 2 * HOUR,
            properties=[("customer", "acme")],
        )
        record(rec, "0190f2a4-0000-7000-8000-000000000003", start=now - HOUR, flow="orders")
        entry = rec.begin(
            FAILED_ID,
            "corr-f",
            "invoice-forward",
            "3",
            "mail imap plant@mail.plant.example:143/INBOX",
            ["mail smtp accounting@smtp.example.com:465"],
            start=now - HOUR / 2,
            level=LogLevel.DEBUG,
        )
        entry.custom_property("customer", "acme")
        entry.custom_property("customer", "globex")
        entry.log("info", "forwarding Invoice 42 from acme")
        run = entry.start_run(start=now - HOUR / 2)
        t = now - HOUR / 2
        run.step("step1", "12", "", StepStatus.COMPLETED, t, t + 0.002)
        error = _chained_error()
        run.step("step2", "31", "", StepStatus.FAILED, t + 0.002, t + 0.0125, error=error)
        entry.fail(error, MplStatus.FAILED, failed_step="step2")
    return tenant


def _rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[1:]]


def test_commands_need_a_tenant(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "nowhere", "list")
    assert result.exit_code == 1
    assert "no tenant" in result.output


def test_list_without_a_database_is_empty(tenant: Path) -> None:
    result = run_cli(tenant, "list")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "(none)"
    assert json.loads(run_cli(tenant, "list", "--format", "json").output) == []
    assert not (tenant / "mpl.sqlite").exists()  # reading creates nothing


def test_list_is_a_table_newest_first(populated: Path) -> None:
    result = run_cli(populated, "list")
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    for column in ("MESSAGE ID", "FLOW", "VERSION", "STATUS", "LOG START", "DURATION"):
        assert column in header
    rows = _rows(result.output)
    assert [row[0][-1] for row in rows] == ["f", "3", "2", "1"]
    assert rows[0][3] == "FAILED"
    assert rows[0][-1] == "step2"  # the failed step column


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--flow", "orders"], ["3", "1"]),
        (["--status", "FAILED"], ["f"]),
        (["--status", "completed"], ["3", "2", "1"]),
        (["--since", "90m"], ["f", "3"]),
        (["--until", "150m"], ["1"]),
        (["--since", "4h", "--until", "45m"], ["3", "2", "1"]),
        (["--id", "0190f2a4-0000-7000-8000-000000000002"], ["2"]),
        (["--id", "0190f2a4-0000-7000-8000-00000000000"], ["f", "3", "2", "1"]),
        (["--property", "customer=acme"], ["f", "2"]),
        (["--property", "customer=acme", "--property", "customer=globex"], ["f"]),
        (["--property", "customer=nobody"], []),
        (["--limit", "2"], ["f", "3"]),
        (["--flow", "orders", "--status", "COMPLETED", "--limit", "1"], ["3"]),
    ],
)
def test_list_filters(populated: Path, args: list[str], expected: list[str]) -> None:
    result = run_cli(populated, "list", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    assert [item["message_id"][-1] for item in json.loads(result.output)] == expected


def test_list_since_accepts_an_iso_time(populated: Path) -> None:
    result = run_cli(populated, "list", "--since", "2000-01-01T00:00:00Z", "--format", "json")
    assert result.exit_code == 0
    assert len(json.loads(result.output)) == 4
    result = run_cli(populated, "list", "--since", "2999-01-01", "--format", "json")
    assert json.loads(result.output) == []


def test_list_json_has_the_summary_fields(populated: Path) -> None:
    [item] = json.loads(run_cli(populated, "list", "--status", "FAILED", "--format", "json").output)
    assert item["message_id"] == FAILED_ID
    assert item["status"] == "FAILED"
    assert item["failed_step"] == "step2"
    assert item["log_start"].endswith("Z")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--since", "yesterday"], "--since"),
        (["--until", "5 parsecs"], "--until"),
        (["--since", "1h", "--until", "2h"], "--since"),
        (["--status", "LOST"], "--status"),
        (["--property", "no-equals-sign"], "--property"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bad_list_options_are_usage_errors_naming_the_option(
    populated: Path, args: list[str], option: str
) -> None:
    result = run_cli(populated, "list", *args)
    assert result.exit_code == 2
    assert option in result.output
    assert "Traceback" not in result.output


def test_show_prints_everything_with_chain_and_hint(populated: Path) -> None:
    result = run_cli(populated, "show", FAILED_ID)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Message ID      {FAILED_ID}" in out
    assert "Status          FAILED" in out
    assert "invoice-forward (version 3)" in out
    assert "customer  acme" in out and "customer  globex" in out
    assert "Run 1: FAILED" in out
    assert "step1  12" in out and "2.0 ms" in out
    assert "step2  31" in out and "10.5 ms" in out
    assert "forwarding Invoice 42 from acme" in out
    assert "Error (last failed step: step2):" in out
    chain = render_chain(_chained_error())
    assert chain in out  # exactly as render_chain prints it
    assert "  nested exception is:\n\tSSLHandshakeException: PKIX path building failed" in out
    lines = out.splitlines()
    assert lines[-1] == f"hint: {HINT}"  # on its own line, after the chain
    assert lines[-2].startswith("\tSSLHandshakeException")


def test_show_accepts_a_unique_prefix_of_8_or_more(populated: Path) -> None:
    with MplRecorder(MplStore(populated / "mpl.sqlite"), owns_store=True) as rec:
        record(rec, "0190f2a5-aaaa-7000-8000-000000000000")
    result = run_cli(populated, "show", "0190f2a5")
    assert result.exit_code == 0, result.output
    assert "0190f2a5-aaaa-7000-8000-000000000000" in result.output
    too_short = run_cli(populated, "show", "0190f2a")
    assert too_short.exit_code == 1
    assert "at least 8 characters" in too_short.output
    ambiguous = run_cli(populated, "show", "0190f2a4-0000")
    assert ambiguous.exit_code == 1
    assert "matches more than one entry" in ambiguous.output
    assert "give more characters" in ambiguous.output


def test_show_json_is_the_entry(populated: Path) -> None:
    result = run_cli(populated, "show", FAILED_ID, "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["message_id"] == FAILED_ID
    assert data["error"]["hint"] == HINT
    assert [lv["type"] for lv in data["error"]["levels"]] == [
        "MailConnectException",
        "SSLHandshakeException",
    ]
    assert data["custom_properties"] == {"customer": ["acme", "globex"]}
    assert data["log_level"] == "debug"


def test_show_unknown_id_is_a_clear_error(populated: Path) -> None:
    result = run_cli(populated, "show", "ffffffff-0000-7000-8000-000000000000")
    assert result.exit_code == 1
    assert "error: no MPL entry with message ID" in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_show_without_a_database(tenant: Path) -> None:
    result = run_cli(tenant, "show", "0190f2a4-0000")
    assert result.exit_code == 1
    assert "nothing has been recorded yet" in result.output


def test_tail_count_stops_by_itself(populated: Path) -> None:
    def later() -> None:
        time.sleep(0.3)
        with MplRecorder(MplStore(populated / "mpl.sqlite"), owns_store=True) as rec:
            record(rec, "new-1", start=time.time())
            record(rec, "new-2", start=time.time(), status=MplStatus.FAILED)
            record(rec, "new-3", start=time.time())

    writer = threading.Thread(target=later)
    writer.start()
    started = time.monotonic()
    result = run_cli(populated, "tail", "--count", "2", "--interval", "50ms", "--timeout", "20s")
    writer.join()
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 15
    lines = result.output.splitlines()
    assert lines[0].startswith("MESSAGE ID")
    assert [line.split()[0] for line in lines[1:]] == ["new-1", "new-2"]  # not the old ones


def test_tail_reports_changes_to_final(populated: Path) -> None:
    store = MplStore(populated / "mpl.sqlite")
    rec = MplRecorder(store, owns_store=True)
    entry = rec.begin("slow-1", "c", "orders", "1", "s", ["r"])
    rec.flush()

    def later() -> None:
        time.sleep(0.3)
        entry.complete(MplStatus.FAILED)
        rec.close()

    writer = threading.Thread(target=later)
    writer.start()
    result = run_cli(
        populated, "tail", "--status", "FAILED", "--count", "1", "--interval", "50ms",
        "--timeout", "20s", "--format", "json",
    )  # fmt: skip
    writer.join()
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    assert json.loads(line)["message_id"] == "slow-1"
    assert json.loads(line)["status"] == "FAILED"


def test_tail_timeout_stops_with_nothing_new(populated: Path) -> None:
    started = time.monotonic()
    result = run_cli(populated, "tail", "--interval", "50ms", "--timeout", "300ms")
    assert result.exit_code == 0
    assert 0.25 < time.monotonic() - started < 10
    assert len(result.output.splitlines()) == 1  # the header only


def test_tail_waits_for_a_database_that_does_not_exist_yet(tenant: Path) -> None:
    def later() -> None:
        time.sleep(0.3)
        with MplRecorder(MplStore(tenant / "mpl.sqlite"), owns_store=True) as rec:
            record(rec, "first", start=time.time())

    writer = threading.Thread(target=later)
    writer.start()
    result = run_cli(tenant, "tail", "--count", "1", "--interval", "50ms", "--timeout", "20s")
    writer.join()
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split()[0] == "first"


def test_tail_bad_interval_is_a_usage_error(tenant: Path) -> None:
    result = run_cli(tenant, "tail", "--interval", "often")
    assert result.exit_code == 2
    assert "--interval" in result.output


def test_purge_older_than(populated: Path) -> None:
    result = run_cli(populated, "purge", "--older-than", "90m")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "removed 2 entries that ended more than 90m ago"
    remaining = json.loads(run_cli(populated, "list", "--format", "json").output)
    assert [item["message_id"][-1] for item in remaining] == ["f", "3"]


def test_purge_without_age_applies_the_retention(populated: Path) -> None:
    assert run_cli(populated, "retention", "--set", "150m").exit_code == 0
    result = run_cli(populated, "purge")
    assert result.exit_code == 0
    assert "removed 1 entry that ended more than 150m ago" in result.output


def test_purge_without_a_database(tenant: Path) -> None:
    result = run_cli(tenant, "purge", "--older-than", "1d")
    assert result.exit_code == 0
    assert "removed 0 entries" in result.output


def test_purge_bad_age_is_a_usage_error(tenant: Path) -> None:
    result = run_cli(tenant, "purge", "--older-than", "old")
    assert result.exit_code == 2
    assert "--older-than" in result.output


def test_retention_show_and_set(tenant: Path) -> None:
    assert run_cli(tenant, "retention").output.strip() == "retention: 30d (default)"
    result = run_cli(tenant, "retention", "--set", "14d")
    assert result.exit_code == 0
    assert result.output.strip() == "retention set to 14d"
    assert run_cli(tenant, "retention").output.strip() == "retention: 14d"
    with MplStore(tenant / "mpl.sqlite") as store:
        assert store.retention().days == 14
    bad = run_cli(tenant, "retention", "--set", "forever")
    assert bad.exit_code == 2
    assert "--set" in bad.output


def test_tail_stops_quietly_on_ctrl_c(populated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("flowrt.cli.mpl.time.sleep", interrupted)
    result = run_cli(populated, "tail")
    assert result.exit_code == 0
    assert "Traceback" not in result.output
    assert result.exception is None


def test_show_prints_trace_content_with_the_truncation_mark(tenant: Path) -> None:
    with MplRecorder(
        MplStore(tenant / "mpl.sqlite"), level=LogLevel.TRACE, content_limit=100, owns_store=True
    ) as rec:
        entry = rec.begin("0190f2a4-7777-7000-8000-000000000000", "c", "f", "1", "s", ["r"])
        t = time.time()
        run = entry.start_run()
        run.step("step1", "4", "", StepStatus.COMPLETED, t, t, content=({"Subject": "hi"}, "ok"))
        run.step("step2", "5", "", StepStatus.COMPLETED, t, t, content=({}, "line\n" * 100))
        entry.complete()
    result = run_cli(tenant, "show", "0190f2a4-7777")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "content after step1:" in out
    assert "        Subject: hi" in out
    assert "content after step2, truncated (original 500 bytes):" in out
    assert out.count("        line") == 20
    assert "        [truncated]" in out
