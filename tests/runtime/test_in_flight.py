"""Several mails in flight (``in-flight N``) keep every guarantee of one mail at a time.

Real Dovecot holds the source mailbox; a scripted SMTP server (aiosmtpd) receives, so that
copies, the order of arrival and the transactions open at once can be counted, and one
recipient can be held and refused for now.
"""

from __future__ import annotations

import email
import email.policy
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import structlog

from flowrt.mpl.store import MplStore
from flowrt.tenant import Tenant
from tests.runtime.test_runtime_e2e import (
    Runtime,
    add_user_credential,
    flowrt,
    tenant,
    wait_for,
)
from tests.servers import DovecotServer, MailboxUser
from tests.servers.scripted_smtp import ScriptedSMTPServer

__all__ = ["tenant"]  # the fixture, imported for pytest

pytestmark = pytest.mark.servers

FLOW = """flow inflight {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "source"
        post-process  mark-read
        poll          every 1s
        in-flight     {in_flight}
        timeout       10s
    }}
    receiver mail out {{
        address       "127.0.0.1:{smtp}"
        protection    off
        auth          none
        from          "flowrt@example.com"
        to            "${{header.To}}"
        subject       "${{header.Subject}}"
        timeout       10s
    }}
}}
"""


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    saved = structlog.get_config()  # `flowrt run --once` in process reconfigures it
    yield
    structlog.configure(**saved)


@pytest.fixture
def source(
    tenant: Path, dovecot: DovecotServer, new_mailbox_user: Callable[..., MailboxUser]
) -> MailboxUser:
    user = new_mailbox_user(prefix="src")
    add_user_credential(tenant, "source", user)
    return user


def deploy(tenant: Path, dovecot: DovecotServer, smtp: ScriptedSMTPServer, in_flight: int) -> None:
    path = tenant.parent / "inflight.flow"
    path.write_text(FLOW.format(imap=dovecot.imap_port, smtp=smtp.port, in_flight=in_flight))
    result = flowrt(tenant, "deploy", str(path))
    assert result.exit_code == 0, result.output


def fill(
    dovecot: DovecotServer,
    user: MailboxUser,
    count: int,
    to: str = "a@example.com",
    prefix: str = "mail",
) -> None:
    for index in range(count):
        message = EmailMessage()
        message["From"] = "billing@supplier.example"
        message["To"] = to
        message["Subject"] = f"{prefix} {index}"
        message["Message-ID"] = f"<{time.monotonic_ns()}.{index}@supplier.example>"
        message.set_content("Hello.")
        dovecot.append(user.address, "INBOX", message.as_bytes(policy=email.policy.SMTP))


def received(smtp: ScriptedSMTPServer) -> list[str]:
    subjects = []
    for message in list(smtp.received):
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        subjects.append(str(parsed["Subject"]))
    return subjects


def seen(dovecot: DovecotServer, user: MailboxUser) -> dict[str, bool]:
    found = {}
    for _uid, flags, raw in dovecot.messages(user.address):
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        found[str(parsed["Subject"])] = "\\Seen" in flags
    return found


def entry_statuses(tenant: Path) -> Counter[str]:
    with MplStore(Tenant(tenant).mpl_path) as store:
        return Counter(s.status.value for s in store.list_entries(limit=None))


def poll_once(tenant: Path) -> None:
    result = flowrt(tenant, "run", "--once")
    assert result.exit_code in (0, 1), result.output


def test_in_flight_1_keeps_the_mailbox_order_at_the_receiver(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.01})
    deploy(tenant, dovecot, smtp, in_flight=1)
    fill(dovecot, source, 30)
    poll_once(tenant)
    assert received(smtp) == [f"mail {i}" for i in range(30)]
    assert smtp.most_in_data == 1
    assert all(seen(dovecot, source).values())


def test_a_4xx_on_one_mail_does_not_stall_the_others(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    # the first mail's recipient is held until the five others arrived, then refused for now
    smtp = scripted_smtp(
        rcpt_hold={"slow@example.com": 5},
        rcpt_replies={"slow@example.com": "451 4.3.0 try again later"},
    )
    deploy(tenant, dovecot, smtp, in_flight=4)
    fill(dovecot, source, 1, to="slow@example.com", prefix="slow")
    fill(dovecot, source, 5)
    poll_once(tenant)
    assert smtp.held_saw == [5]  # the others went through while it waited
    assert sorted(received(smtp)) == [f"mail {i}" for i in range(5)]
    marks = seen(dovecot, source)
    assert marks.pop("slow 0") is False  # refused for now: left unread, to try again
    assert all(marks.values())
    statuses = entry_statuses(tenant)
    assert statuses["COMPLETED"] == 5 and sum(statuses.values()) == 6


def test_sigterm_hands_back_the_mails_not_started(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(delays={"DATA": 0.2})
    deploy(tenant, dovecot, smtp, in_flight=3)
    fill(dovecot, source, 40)
    runtime = Runtime(tenant)
    wait_for(lambda: len(smtp.received) >= 4, timeout=30, what="the first mails")
    assert runtime.stop() == 0
    sent = Counter(received(smtp))
    marks = seen(dovecot, source)
    assert all(n == 1 for n in sent.values())
    # every mail sent is marked; the ones not started are as they were, with no attempt
    assert {s for s, read in marks.items() if read} == set(sent)
    handed_back = [s for s, read in marks.items() if not read]
    assert handed_back, "the runtime finished everything; the test proves nothing"
    assert entry_statuses(tenant) == Counter({"COMPLETED": len(sent)})
    with sqlite3.connect(Tenant(tenant).state_path) as db:
        failed = db.execute("SELECT count(*) FROM mail_records WHERE status != 'done'")
        assert failed.fetchone() == (0,)
    poll_once(tenant)  # the next runtime takes them, each once
    assert Counter(received(smtp)) == Counter({f"mail {i}": 1 for i in range(40)})


def test_kill_9_mid_batch_loses_nothing_and_resends_only_cut_transactions(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    in_flight, count = 6, 120
    smtp = scripted_smtp(delays={"DATA": 0.03})
    deploy(tenant, dovecot, smtp, in_flight=in_flight)
    fill(dovecot, source, count)
    rng = random.Random(22)
    kills = 0
    while kills < 5 and len(smtp.received) < count:
        runtime = Runtime(tenant)
        before = len(smtp.received)
        wait_for(lambda b=before: len(smtp.received) > b, timeout=30, what="mails in flight")
        time.sleep(rng.uniform(0.05, 0.4))
        runtime.proc.send_signal(signal.SIGKILL)
        runtime.proc.wait(timeout=10)
        runtime._log_file.close()
        kills += 1
    runtime = Runtime(tenant)
    try:
        wait_for(lambda: set(received(smtp)) >= {f"mail {i}" for i in range(count)}, 60, "all")
        wait_for(lambda: all(seen(dovecot, source).values()), 30, "every mail marked")
    finally:
        assert runtime.stop() == 0
    copies = Counter(received(smtp))
    assert len(copies) == count  # nothing lost
    twice = sum(n - 1 for n in copies.values())
    # a kill cuts at most the transactions open at that moment: one per mail in flight
    assert twice <= kills * in_flight, copies
    assert smtp.most_in_data > 1, "one mail at a time; the test proves nothing"


def test_a_backlog_over_max_messages_is_worked_off_without_waiting_for_the_interval(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    path = tenant.parent / "inflight.flow"
    text = FLOW.format(imap=dovecot.imap_port, smtp=smtp.port, in_flight=2)
    path.write_text(text.replace("every 1s", "every 1h\n        max-messages  2"))
    assert flowrt(tenant, "deploy", str(path)).exit_code == 0
    fill(dovecot, source, 7)
    runtime = Runtime(tenant)
    try:
        # four polls of at most 2 mails, one after the other: not one poll an hour
        wait_for(lambda: len(smtp.received) == 7, timeout=30, what="the whole backlog")
        wait_for(lambda: all(seen(dovecot, source).values()), timeout=30, what="marks")
    finally:
        assert runtime.stop() == 0
    assert sorted(received(smtp)) == sorted(f"mail {i}" for i in range(7))
