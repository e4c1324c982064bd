"""Every message ends: attempts across polls, dead letters, per-recipient delivery state.

Real Dovecot holds the source mailbox; a scripted SMTP server (aiosmtpd) refuses recipients
per script (550, 452), so that what each recipient got can be counted. Each poll is one
``flowrt run --once``, in process: a poll is what these rules are about.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from flowrt.mpl.store import MplStore
from flowrt.runtime.state import StateDB
from flowrt.tenant import Tenant
from tests.runtime.test_runtime_e2e import (
    Runtime,
    add_user_credential,
    flowrt,
    mail,
    tenant,
    wait_for,
)

__all__ = ["tenant"]  # the fixture, imported for pytest
from tests.servers import DovecotServer, MailboxUser
from tests.servers.scripted_smtp import ScriptedSMTPServer

pytestmark = pytest.mark.servers

FLOW = """flow ends {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "source"
        post-process  {post_process}
        poll          {poll}
        timeout       10s
    }}
    receiver mail out {{
        address       "127.0.0.1:{smtp}"
        protection    off
        auth          none
        from          "flowrt@example.com"
        to            "{to}"
        subject       "Fwd: ${{header.Subject}}"
        timeout       10s
    }}
{on_error}}}
"""

GOOD = ("a@example.com", "c@example.com")
ALL = "a@example.com, b@example.com, c@example.com"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """`flowrt run --once` in process points structlog at the CLI runner's stream; the
    tests after these must find it as it was."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def source(
    tenant: Path, dovecot: DovecotServer, new_mailbox_user: Callable[..., MailboxUser]
) -> MailboxUser:
    user = new_mailbox_user(prefix="src")
    add_user_credential(tenant, "source", user)
    return user


def deploy(
    tenant: Path,
    dovecot: DovecotServer,
    smtp: ScriptedSMTPServer,
    *,
    to: str = ALL,
    on_error: str = "",
    poll: str = "every 1s",
    post_process: str = "mark-read",
) -> None:
    path = tenant.parent / "ends.flow"
    path.write_text(
        FLOW.format(
            imap=dovecot.imap_port,
            smtp=smtp.port,
            to=to,
            on_error=on_error,
            poll=poll,
            post_process=post_process,
        )
    )
    result = flowrt(tenant, "deploy", str(path))
    assert result.exit_code == 0, result.output


def poll(tenant: Path, times: int = 1) -> None:
    for _ in range(times):
        result = flowrt(tenant, "run", "--once")
        assert result.exit_code in (0, 1), result.output


def copies(smtp: ScriptedSMTPServer) -> Counter[str]:
    """How many copies each recipient got."""
    return Counter(r for message in smtp.received for r in message.rcpt_tos)


def entries(tenant: Path) -> list[dict[str, Any]]:
    with MplStore(Tenant(tenant).mpl_path) as store:
        return [store.get(s.message_id).to_dict() for s in store.list_entries(limit=None)]


def dead_letters(tenant: Path) -> list[dict[str, Any]]:
    result = flowrt(tenant, "deadletter", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    return rows


def flags(dovecot: DovecotServer, user: MailboxUser) -> list[tuple[str, ...]]:
    return [f for _uid, f, _raw in dovecot.messages(user.address)]


def test_one_of_three_recipients_refused_each_valid_recipient_gets_one_copy_ever(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(rcpt_replies={"b@example.com": "550 5.1.1 <b@example.com>: no such user"})
    deploy(tenant, dovecot, smtp, on_error="    on-error {\n        max-attempts 3\n    }\n")
    dovecot.append(source.address, "INBOX", mail("invoice 1"))
    poll(tenant, 5)
    assert copies(smtp) == Counter({"a@example.com": 1, "c@example.com": 1})
    found = entries(tenant)
    assert len(found) == 3  # one per attempt; the last one is the dead letter
    first = min(found, key=lambda e: e["log_start"])
    props = first["custom_properties"]
    assert sorted(props["recipient.sent"]) == ["out: a@example.com", "out: c@example.com"]
    assert props["recipient.refused"] == [
        "out: b@example.com (550 5.1.1 <b@example.com>: no such user)"
    ]
    [dead] = dead_letters(tenant)
    assert dead["attempts"] == "3"
    assert "b@example.com" in dead["error"]
    [(mail_flags)] = flags(dovecot, source)
    assert "$flowrt-dead" in mail_flags and "\\Seen" not in mail_flags


def test_a_recipient_refused_for_now_gets_it_once_on_a_later_attempt(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    replies = {"b@example.com": "452 4.2.2 mailbox full"}
    smtp = scripted_smtp(rcpt_replies=replies)
    deploy(tenant, dovecot, smtp)
    dovecot.append(source.address, "INBOX", mail("invoice 2"))
    poll(tenant, 2)
    assert copies(smtp) == Counter({"a@example.com": 1, "c@example.com": 1})
    pending = entries(tenant)[0]["custom_properties"]["recipient.pending"]
    assert pending == ["out: b@example.com (452 4.2.2 mailbox full)"]
    replies.clear()  # the mailbox has room again
    poll(tenant, 3)
    assert copies(smtp) == Counter({"a@example.com": 1, "b@example.com": 1, "c@example.com": 1})
    [(mail_flags)] = flags(dovecot, source)
    assert "\\Seen" in mail_flags
    assert dead_letters(tenant) == []


def test_a_poison_mail_ends_after_the_default_limit_with_one_entry_per_attempt(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp()
    deploy(tenant, dovecot, smtp)
    dovecot.append(source.address, "INBOX", PNG)
    dovecot.append(source.address, "INBOX", mail("fine"))
    poll(tenant, 7)
    assert len(smtp.received) == 1  # the good mail, once
    poison = [e for e in entries(tenant) if "mail.size" in e["custom_properties"]]
    assert len(poison) == 5  # the default max-attempts, and no more after it
    # the raw size as the server gave it (Dovecot stores line ends as CRLF)
    assert all(int(e["custom_properties"]["mail.size"][0]) >= len(PNG) for e in poison)
    assert all(e["status"] == "ESCALATED" for e in poison)
    assert "not a mail" in poison[0]["error"]["chain"]
    [dead] = dead_letters(tenant)
    assert dead["attempts"] == "5"
    poison_flags = flags(dovecot, source)[0]
    assert "$flowrt-dead" in poison_flags
    status = flowrt(tenant, "status", "--format", "json")
    assert json.loads(status.output)["flows"][0]["dead_letters"] == 1


def test_permanent_errors_dead_letter_at_once_and_a_replay_delivers_once(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    replies = {"a@example.com": "550 5.7.1 relaying denied"}
    smtp = scripted_smtp(rcpt_replies=replies)
    on_error = "    on-error {\n        permanent-errors dead-letter\n    }\n"
    deploy(tenant, dovecot, smtp, to="a@example.com", on_error=on_error)
    dovecot.append(source.address, "INBOX", mail("refused"))
    poll(tenant, 2)
    assert len(entries(tenant)) == 1  # dead-lettered on the first attempt
    [dead] = dead_letters(tenant)
    assert smtp.received == []
    replies.clear()  # the operator fixed the relay
    replay = flowrt(tenant, "deadletter", "replay", dead["message_id"][:12])
    assert replay.exit_code == 0, replay.output
    again = flowrt(tenant, "deadletter", "replay", dead["message_id"])
    assert again.exit_code == 1 and "replayed already" in again.output
    poll(tenant, 3)
    assert copies(smtp) == Counter({"a@example.com": 1})
    assert dead_letters(tenant) == []
    [(mail_flags)] = flags(dovecot, source)
    assert "\\Seen" in mail_flags and "$flowrt-dead" not in mail_flags
    listed = flowrt(tenant, "deadletter", "list", "--all", "--format", "json")
    assert json.loads(listed.output)[0]["replayed"]


def test_a_dead_letter_folder_that_does_not_exist_leaves_the_mail_and_says_so(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(rcpt_replies={"a@example.com": "550 5.1.1 no such user"})
    on_error = (
        "    on-error {\n        permanent-errors dead-letter\n"
        '        dead-letter folder "Failed"\n    }\n'
    )
    deploy(tenant, dovecot, smtp, to="a@example.com", on_error=on_error)
    dovecot.append(source.address, "INBOX", mail("nowhere to go"))
    poll(tenant)
    [entry] = entries(tenant)
    assert entry["status"] == "FAILED"
    [error] = entry["custom_properties"]["dead-letter-error"]
    assert "'Failed'" in error and "does not exist" in error
    assert "create the folder" in entry["error"]["hint"]
    assert dead_letters(tenant) == []
    [(mail_flags)] = flags(dovecot, source)  # still there, as it was
    assert "$flowrt-dead" not in mail_flags and "\\Seen" not in mail_flags
    status = json.loads(flowrt(tenant, "status", "--format", "json").output)
    assert "dead-letter folder 'Failed' failed" in status["flows"][0]["last_error"]
    dovecot.create_folder(source.address, "Failed")
    poll(tenant)
    assert [m for m in dovecot.messages(source.address, "Failed")]
    assert len(dead_letters(tenant)) == 1


def test_attempts_wait_for_the_backoff_across_polls(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(rcpt_replies={"a@example.com": "451 4.3.0 try later"})
    on_error = "    on-error {\n        retry 1 every 1h\n    }\n"
    deploy(tenant, dovecot, smtp, to="a@example.com", on_error=on_error)
    dovecot.append(source.address, "INBOX", mail("later"))
    # the in-run retry would wait an hour: the first attempt is cut short by hand instead
    with StateDB(Tenant(tenant).state_path) as state:
        state.record_failure(
            f"imap:{source.address}@127.0.0.1/INBOX",
            f"uid:{_uidvalidity(dovecot, source)}:1",
            error="earlier",
            next_attempt=4_000_000_000.0,
        )
    poll(tenant, 2)
    assert entries(tenant) == []  # not due: not handed over


def test_a_mail_completed_before_a_crash_is_recorded_not_run_again(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    """A node killed after the mail's COMPLETED entry was made durable but before its
    record was written: the mail is handed over again, and is recorded as done, neither
    sent again nor given a second final entry."""
    smtp = scripted_smtp()
    deploy(tenant, dovecot, smtp, to="a@example.com", post_process="keep")
    dovecot.append(source.address, "INBOX", mail("once"))
    poll(tenant)
    assert copies(smtp) == Counter({"a@example.com": 1})
    scope = f"imap:{source.address}@127.0.0.1/INBOX"
    with StateDB(Tenant(tenant).state_path) as state:
        assert state.forget(scope, state.keys(scope)) == 1  # the record the crash never wrote
    poll(tenant, 2)
    assert copies(smtp) == Counter({"a@example.com": 1})
    assert [e["status"] for e in entries(tenant)] == ["COMPLETED"]
    with StateDB(Tenant(tenant).state_path) as state:
        assert len(state.keys(scope)) == 1  # recorded now: the next polls skip it at once


def test_an_idle_flow_wakes_up_for_its_due_retries(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(rcpt_replies={"a@example.com": "451 4.3.0 try later"})
    on_error = "    on-error {\n        retry 1 every 300ms\n        max-attempts 3\n    }\n"
    deploy(tenant, dovecot, smtp, to="a@example.com", on_error=on_error, poll="idle")
    runtime = Runtime(tenant)
    try:
        dovecot.append(source.address, "INBOX", mail("idle retry"))
        # no new mail comes, and the IDLE refresh is 25 minutes away: only the retries'
        # own due times can bring the mail to its end
        wait_for(lambda: len(dead_letters(tenant)) == 1, timeout=60, what="the dead letter")
    finally:
        assert runtime.stop() == 0
    found = entries(tenant)
    assert len(found) == 3
    assert all(len(e["runs"]) == 2 for e in found)  # each attempt retried once in its run


def test_a_dead_letter_receiver_gets_the_error_and_the_original_mail(
    tenant: Path,
    dovecot: DovecotServer,
    source: MailboxUser,
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    smtp = scripted_smtp(rcpt_replies={"a@example.com": "550 5.1.1 no such user"})
    on_error = (
        "    on-error {\n        max-attempts 2\n        dead-letter receiver errors\n    }\n"
        "    receiver mail errors {\n"
        f'        address "127.0.0.1:{smtp.port}"\n        protection off\n        auth none\n'
        '        from "flowrt@example.com"\n        to "ops@example.com"\n'
        '        subject "dead letter: ${header.Subject}"\n        attachments from-message\n'
        "    }\n"
    )
    deploy(tenant, dovecot, smtp, to="a@example.com", on_error=on_error)
    dovecot.append(source.address, "INBOX", mail("poisoned", body="the original text"))
    poll(tenant, 4)
    [dead] = [m for m in smtp.received if "ops@example.com" in m.rcpt_tos]
    assert len(smtp.received) == 1  # nothing else went to the dead-letter receiver
    text = email.message_from_bytes(dead.data, policy=email.policy.default)
    assert text["Subject"] == "dead letter: poisoned"
    body = text.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert "after 2 attempt(s)" in content and "550 5.1.1 no such user" in content
    [original] = [p for p in text.iter_attachments() if p.get_content_type() == "message/rfc822"]
    assert b"the original text" in original.as_bytes()
    [row] = dead_letters(tenant)
    assert row["place"] == "receiver 'errors'"
    [(mail_flags)] = flags(dovecot, source)
    assert "$flowrt-dead" in mail_flags


def _uidvalidity(dovecot: DovecotServer, user: MailboxUser) -> int:
    with dovecot.imap(user.address) as client:
        _typ, data = client.status("INBOX", "(UIDVALIDITY)")
    text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
    return int(text.split("UIDVALIDITY")[1].strip(" )"))
