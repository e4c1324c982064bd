"""Rules, limit, digest, retries and the CLI's refusals, without a mail server: the notifier
gets a recording ``send`` (or a closed port), and a clock that tests move by hours."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from flowrt.adapters.mail.smtp.transaction import TransactionResult
from flowrt.mpl import MplStatus
from flowrt.notify.config import NotifyServer, edit_config, make_rule, replace
from flowrt.notify.notifier import Backoff, Notifier
from flowrt.notify.store import NotifyStore
from flowrt.runtime.state import PollerHealth, StateDB
from flowrt.runtime.status import ERROR, FlowStatus, RuntimeStatus, now_iso, write_status
from flowrt.security import TenantSecurity
from flowrt.tenant import Tenant
from tests.notify.conftest import Clock, flowrt, ok, record_failure
from tests.servers import free_port

OPS = "ops@example.com"


class Outbox:
    """A ``send`` that records what would have gone out."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, str]] = []  # recipient, body text
        self.subjects: list[str] = []

    async def __call__(
        self, server: NotifyServer, security: TenantSecurity, recipient: str, data: bytes
    ) -> TransactionResult:
        mail = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(mail, EmailMessage)
        self.mails.append((recipient, mail.get_content().replace("\r\n", "\n")))
        self.subjects.append(str(mail["Subject"]))
        return TransactionResult((recipient,), {}, {recipient: "250 2.1.5 Ok"}, "250 2.0.0 Ok")


def set_server(tenant: Path, port: int = 465, timeout: float = 5.0) -> None:
    """The server as `server set` stores it (without its connection test)."""
    server = NotifyServer("127.0.0.1", port, "smtps", "flowrt@example.com", timeout=timeout)
    with edit_config(Tenant(tenant)) as edit:
        edit.value = replace(edit.value, server=server)


def notifier(tenant: Path, clock: Clock, send: object = None, **kw: object) -> Notifier:
    t = Tenant(tenant)
    return Notifier(t, TenantSecurity.open(t), clock=clock, send=send or Outbox(), **kw)  # type: ignore[arg-type]


def attempts(tenant: Path) -> list[dict[str, object]]:
    return json.loads(ok(flowrt(tenant, "notify", "log", "--format", "json")).output)


def counters(tenant: Path) -> dict[str, dict[str, object]]:
    rows = json.loads(ok(flowrt(tenant, "notify", "counters", "--format", "json")).output)
    return {row["recipient"]: row for row in rows}


# ----------------------------------------------------------------------------- bad input


def test_bad_rules_are_refused_with_a_clear_error_and_nothing_stored(bare_tenant: Path) -> None:
    ok(flowrt(bare_tenant, "notify", "rule", "add", "good", "--on", "message-failed", "--to", OPS))
    settings = bare_tenant / "notify.json"
    before = settings.read_bytes()
    cases = [
        (["--on", "message-failed", "--to", "ops at example"], "is not a mail address"),
        (["--on", "message-failed", "--to", "Ops <ops@example.com>"], "is not a mail address"),
        (["--on", "flow-error", "--for", "10s", "--to", OPS], "out of range for flow-error"),
        (["--on", "keystore-expiry", "--within", "400d", "--to", OPS], "allowed 1d to 365d"),
        (["--on", "poller-failing", "--to", OPS], "needs --for DURATION"),
        (["--on", "flow-error", "--for", "soon", "--to", OPS], "not a duration"),
        (["--on", "message-failed", "--flow", "nope", "--to", OPS], "no such flow is deployed"),
    ]
    for args, expected in cases:
        result = flowrt(bare_tenant, "notify", "rule", "add", "bad", *args)
        assert result.exit_code == 2, result.output
        assert expected in result.output, result.output
        assert "Traceback" not in result.output
        assert settings.read_bytes() == before
    listed = json.loads(
        ok(flowrt(bare_tenant, "notify", "rule", "list", "--format", "json")).output
    )
    assert [r["name"] for r in listed] == ["good"]
    assert listed[0] == {
        "name": "good",
        "trigger": "message-failed",
        "flow": "*",
        "duration_seconds": None,
        "to": [OPS],
        "include_content": False,
    }


def test_plain_and_optional_tls_servers_are_refused(bare_tenant: Path) -> None:
    for protection in ("off", "starttls-optional"):
        result = flowrt(
            bare_tenant,
            "notify",
            "server",
            "set",
            "127.0.0.1:25",
            "--protection",
            protection,
            "--from",
            "flowrt@example.com",
        )
        assert result.exit_code == 2, result.output
        assert f"--protection {protection} is refused" in result.output
        assert "hint: use --protection smtps (port 465) or starttls-mandatory" in result.output
    result = flowrt(
        bare_tenant,
        "notify",
        "server",
        "set",
        "127.0.0.1:465",
        "--protection",
        "smtps",
        "--from",
        "not an address",
    )
    assert (
        result.exit_code == 2 and "--from: 'not an address' is not a mail address" in result.output
    )
    assert not (bare_tenant / "notify.json").exists()
    shown = ok(flowrt(bare_tenant, "notify", "server", "show"))
    assert "no notification server: no alerts are sent" in shown.output


def test_rule_for_a_deployed_flow_and_remove(bare_tenant: Path, tmp_path: Path) -> None:
    flow = tmp_path / "f.flow"
    flow.write_text(
        'flow invoice-forward {\n  sender mail {\n    protocol imap\n    address "127.0.0.1:143"\n'
        '    auth plain credential "x"\n  }\n  receiver mail out {\n'
        '    address "127.0.0.1:465"\n    protection smtps\n    from "a@example.com"\n'
        '    to "b@example.com"\n  }\n}\n'
    )
    ok(
        flowrt(
            bare_tenant, "credentials", "add", "x", "--user", "u", "--password-stdin", input="pw"
        )
    )
    ok(flowrt(bare_tenant, "deploy", str(flow)))
    ok(
        flowrt(
            bare_tenant,
            "notify",
            "rule",
            "add",
            "invoices",
            "--on",
            "flow-error",
            "--flow",
            "invoice-forward",
            "--for",
            "30m",
            "--to",
            f"{OPS},lead@example.com",
        )
    )
    table = ok(flowrt(bare_tenant, "notify", "rule", "list")).output
    assert "invoices  flow-error  invoice-forward  30m" in table
    assert "ops@example.com, lead@example.com" in table
    again = flowrt(
        bare_tenant, "notify", "rule", "add", "invoices", "--on", "message-failed", "--to", OPS
    )
    assert again.exit_code == 2 and "add --replace" in again.output
    ok(flowrt(bare_tenant, "notify", "rule", "remove", "invoices"))
    assert "(none)" in ok(flowrt(bare_tenant, "notify", "rule", "list")).output
    missing = flowrt(bare_tenant, "notify", "rule", "remove", "invoices")
    # not found exits 1 (the README's exit-code rule, issue 20)
    assert missing.exit_code == 1 and "no rule named 'invoices'" in missing.output


# ----------------------------------------------------------------------------- limit, digest


async def test_four_failures_give_three_mails_then_reset_sends_the_digest(
    bare_tenant: Path, clock: Clock
) -> None:
    set_server(bare_tenant)
    ok(flowrt(bare_tenant, "notify", "rule", "add", "all", "--on", "message-failed", "--to", OPS))
    outbox = Outbox()
    n = notifier(bare_tenant, clock, outbox)
    await n.run_once()  # the watermark: what was logged before is history
    ids = [record_failure(bare_tenant) for _ in range(4)]
    await n.run_once()

    assert [to for to, _ in outbox.mails] == [OPS] * 3
    for mail, message_id in zip(outbox.mails, ids, strict=False):
        assert f"MPL ID: {message_id}" in mail[1]
    assert counters(bare_tenant)[OPS] | {"last_sent": None} == {
        "recipient": OPS,
        "sent_24h": 3,
        "limit": 3,
        "held_back": 1,
        "last_sent": None,
        "reset_at": None,
    }
    statuses = [a["status"] for a in attempts(bare_tenant)]
    assert statuses == ["held", "sent", "sent", "sent"]

    ok(flowrt(bare_tenant, "notify", "reset", OPS))
    assert counters(bare_tenant)[OPS]["sent_24h"] == 0
    clock.advance(60)
    fifth = record_failure(bare_tenant)
    await n.run_once()
    n.close()

    assert len(outbox.mails) == 4
    last = outbox.mails[-1][1]
    assert f"MPL ID: {fifth}" in last
    assert "1 more alert(s) since" in last
    assert "held back by the limit of 3 mail(s) per 24 hours" in last
    assert f"(flowrt mpl show {ids[3]})" in last
    after = counters(bare_tenant)[OPS]
    assert after["sent_24h"] == 1 and after["held_back"] == 0


async def test_the_window_is_24_hours(bare_tenant: Path, clock: Clock) -> None:
    set_server(bare_tenant)
    ok(flowrt(bare_tenant, "notify", "limit", "1"))
    ok(flowrt(bare_tenant, "notify", "rule", "add", "all", "--on", "message-failed", "--to", OPS))
    outbox = Outbox()
    n = notifier(bare_tenant, clock, outbox)
    await n.run_once()
    record_failure(bare_tenant)
    record_failure(bare_tenant)
    await n.run_once()
    assert len(outbox.mails) == 1
    clock.advance(23 * 3600)
    record_failure(bare_tenant)
    await n.run_once()
    assert len(outbox.mails) == 1  # still inside the day: held too
    clock.advance(3600 + 1)
    record_failure(bare_tenant)
    await n.run_once()
    n.close()
    assert len(outbox.mails) == 2
    assert "2 more alert(s) since" in outbox.mails[1][1]


async def test_content_only_when_the_rule_says_so(bare_tenant: Path, clock: Clock) -> None:
    set_server(bare_tenant)
    ok(flowrt(bare_tenant, "notify", "rule", "add", "plain", "--on", "message-failed", "--to", OPS))
    ok(
        flowrt(
            bare_tenant,
            "notify",
            "rule",
            "add",
            "full",
            "--on",
            "message-failed",
            "--to",
            "dev@example.com",
            "--include-content",
        )
    )
    outbox = Outbox()
    n = notifier(bare_tenant, clock, outbox)
    await n.run_once()
    record_failure(bare_tenant, content="Invoice 4711 for ACME, IBAN DE00 1234")
    await n.run_once()
    n.close()
    mails = dict(outbox.mails)
    assert "IBAN" not in mails[OPS]
    assert "Message content (this rule includes it):" in mails["dev@example.com"]
    assert "Invoice 4711 for ACME, IBAN DE00 1234" in mails["dev@example.com"]


async def test_escalated_counts_and_completed_does_not(bare_tenant: Path, clock: Clock) -> None:
    set_server(bare_tenant)
    ok(flowrt(bare_tenant, "notify", "rule", "add", "other", "--on", "message-failed", "--to", OPS))
    outbox = Outbox()
    n = notifier(bare_tenant, clock, outbox)
    await n.run_once()
    record_failure(bare_tenant, status=MplStatus.ESCALATED)
    record_failure(bare_tenant, status=MplStatus.DISCARDED)
    await n.run_once()
    await n.run_once()  # each message is alerted once
    n.close()
    assert len(outbox.mails) == 1
    assert outbox.subjects[0].startswith("[flowrt] ESCALATED in flow invoice-forward: ")


# ----------------------------------------------------------------------------- server down


async def test_server_down_is_recorded_with_its_chain_and_retried_with_backoff(
    bare_tenant: Path, clock: Clock
) -> None:
    port = free_port()  # nothing listens there
    set_server(bare_tenant, port=port)
    ok(flowrt(bare_tenant, "notify", "rule", "add", "all", "--on", "message-failed", "--to", OPS))
    from flowrt.notify.send import send_mail

    n = notifier(bare_tenant, clock, send_mail, backoff=Backoff(initial=30, tries=3))
    await n.run_once()
    record_failure(bare_tenant)
    await n.run_once()
    (attempt,) = attempts(bare_tenant)
    assert attempt["status"] == "failed" and attempt["tries"] == 1
    assert attempt["chain"] == (
        f"MailConnectException: Couldn't connect to host, port: 127.0.0.1, {port}; timeout 5000\n"
        "  nested exception is:\n\tConnectException: Connection refused"
    )
    store = NotifyStore.open(Tenant(bare_tenant))
    (row,) = store.attempts()
    assert row.next_try == pytest.approx(clock.now + 30)

    await n.run_once()  # not due yet
    assert store.attempts()[0].tries == 1
    clock.advance(31)
    await n.run_once()
    assert store.attempts()[0].tries == 2
    assert store.attempts()[0].next_try == pytest.approx(clock.now + 60)
    clock.advance(61)
    await n.run_once()
    final = store.attempts()[0]
    assert (final.status, final.tries, final.next_try) == ("gave-up", 3, None)
    store.close()
    n.close()
    shown = ok(flowrt(bare_tenant, "notify", "log", "--chain")).output
    assert "gave-up" in shown and "ConnectException: Connection refused" in shown


async def test_one_try_per_cycle_while_the_server_is_down(bare_tenant: Path, clock: Clock) -> None:
    set_server(bare_tenant, port=free_port())
    ok(flowrt(bare_tenant, "notify", "rule", "add", "all", "--on", "message-failed", "--to", OPS))
    from flowrt.notify.send import send_mail

    n = notifier(bare_tenant, clock, send_mail)
    await n.run_once()
    for _ in range(3):
        record_failure(bare_tenant)
    await n.run_once()
    rows = attempts(bare_tenant)
    assert [(a["status"], a["tries"]) for a in rows] == [
        ("failed", 0),
        ("failed", 0),
        ("failed", 1),
    ]
    assert len({a["chain"] for a in rows}) == 1  # the chain of the one try, on each
    clock.advance(31)
    await n.run_once()
    n.close()
    assert sorted(a["tries"] for a in attempts(bare_tenant)) == [0, 0, 2]


async def test_a_hanging_server_is_bounded(bare_tenant: Path, clock: Clock) -> None:
    set_server(bare_tenant, timeout=0.05)
    ok(flowrt(bare_tenant, "notify", "rule", "add", "all", "--on", "message-failed", "--to", OPS))

    async def hang(*_: object) -> TransactionResult:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    n = notifier(bare_tenant, clock, hang)
    await n.run_once()
    record_failure(bare_tenant)
    await n.run_once()  # returns: the send is cut off after its timeout
    n.close()
    (attempt,) = attempts(bare_tenant)
    assert attempt["status"] == "failed"
    assert "did not finish" in str(attempt["chain"])


# ----------------------------------------------------------------------------- conditions


async def test_flow_error_poller_failing_and_stuck_lock(bare_tenant: Path, clock: Clock) -> None:
    set_server(bare_tenant)
    tenant = Tenant(bare_tenant)
    for name, args in (
        ("err", ["--on", "flow-error", "--for", "30m"]),
        ("poll", ["--on", "poller-failing", "--for", "1h"]),
        ("lock", ["--on", "lock-stuck", "--for", "15m"]),
    ):
        ok(flowrt(bare_tenant, "notify", "rule", "add", name, *args, "--to", OPS))
    status = RuntimeStatus(pid=1, host="h", started_at=now_iso(), heartbeat_at=now_iso())
    status.flows["invoice-forward"] = FlowStatus(
        "invoice-forward", 2, state=ERROR, reason="2 poll(s) failed in a row: ..."
    )
    (bare_tenant / "runtime").mkdir(exist_ok=True)
    write_status(tenant, status)
    with StateDB.open(tenant) as state:
        state.save_health(
            PollerHealth(
                "invoice-forward:imap",
                mailbox="imap:plant@mail.plant.example/INBOX",
                last_success=clock.now - 2 * 3600,
                last_error="MailConnectException: Could not connect to IMAP host",
                consecutive_failures=12,
            )
        )
        state.acquire_lock("imap:plant@mail.plant.example/INBOX", "gone:1:abc", ttl=60)

    outbox = Outbox()
    n = notifier(bare_tenant, clock, outbox)
    await n.run_once()
    assert [m[1].split("\n")[0] for m in outbox.mails] == [
        "What happened: Poller invoice-forward:imap (imap:plant@mail.plant.example/INBOX) has "
        "failed 12 poll(s) in a row; last success " + _iso(clock.now - 7200) + ".",
    ]
    clock.advance(31 * 60)  # the flow has been in ERROR for 31 minutes, the lock unrenewed
    await n.run_once()
    await n.run_once()
    n.close()
    subjects = sorted(m[1].split("\n")[0][:60] for m in outbox.mails)
    assert len(outbox.mails) == 3, subjects
    bodies = "\n".join(m[1] for m in outbox.mails)
    assert "Flow invoice-forward (version 2) has been in ERROR since" in bodies
    assert "The lock on imap:plant@mail.plant.example/INBOX, held by gone:1:abc" in bodies
    assert "flowrt locks release imap:plant@mail.plant.example/INBOX" in bodies


def _iso(ts: float) -> str:
    from flowrt.notify.rules import iso

    return iso(ts)


async def test_no_server_no_mail_and_no_flood_later(bare_tenant: Path, clock: Clock) -> None:
    ok(flowrt(bare_tenant, "notify", "rule", "add", "all", "--on", "message-failed", "--to", OPS))
    outbox = Outbox()
    n = notifier(bare_tenant, clock, outbox)
    await n.run_once()
    record_failure(bare_tenant)
    await n.run_once()
    assert outbox.mails == [] and attempts(bare_tenant) == []
    set_server(bare_tenant)
    await n.run_once()
    assert outbox.mails == []  # what happened without a server is not sent later
    record_failure(bare_tenant)
    await n.run_once()
    n.close()
    assert len(outbox.mails) == 1


async def test_a_rule_for_one_flow_ignores_the_others(bare_tenant: Path, clock: Clock) -> None:
    set_server(bare_tenant)
    with edit_config(Tenant(bare_tenant)) as edit:
        rule = make_rule(
            "billing", "message-failed", [OPS], flow="billing", known_flows=["billing"]
        )
        edit.value = replace(edit.value, rules=(rule,))
    outbox = Outbox()
    n = notifier(bare_tenant, clock, outbox)
    await n.run_once()
    record_failure(bare_tenant, flow="invoice-forward")
    billing = record_failure(bare_tenant, flow="billing")
    await n.run_once()
    n.close()
    assert len(outbox.mails) == 1 and f"MPL ID: {billing}" in outbox.mails[0][1]


def test_limit_out_of_range_and_damaged_settings(bare_tenant: Path) -> None:
    for value in ("0", "1001"):
        result = flowrt(bare_tenant, "notify", "limit", value)
        assert result.exit_code == 2 and "between 1 and 1000" in result.output
    assert not (bare_tenant / "notify.json").exists()
    ok(flowrt(bare_tenant, "notify", "limit", "5"))
    assert "5 mails per recipient per 24 h" in ok(flowrt(bare_tenant, "notify", "limit")).output
    (bare_tenant / "notify.json").write_text('{"rules": [{"name": "x"}]}')
    result = flowrt(bare_tenant, "notify", "rule", "list")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot be read: missing field 'trigger'" in result.output
    assert "hint: restore the file from a backup" in result.output
