"""What the state store is asked per poll, not per mail: which mails have recipients' rows
(one query for the poll) and which Message-IDs were done under another UIDVALIDITY (one
query per fetched batch). A mail whose receivers sent it before is still told so."""

from __future__ import annotations

from pathlib import Path

from flowrt.adapters.mail.model import PostProcess
from flowrt.runtime.deliveries import DeliveryWriter
from flowrt.runtime.state import StateDB
from flowrt.source_state import SOURCE_DELIVERED, SOURCE_KEY, SOURCE_SCOPE
from tests.sender.conftest import Recorder, endpoint_for, fill, make_mail, make_sender, poller
from tests.servers import DovecotServer, MailboxUser


async def test_a_poll_asks_the_state_store_once_not_once_per_mail(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail(f"mail {i}") for i in range(12)])
    sender = make_sender(port=dovecot.imap_port, post_process=PostProcess("keep"))
    # the first poll fails every mail: their keys are then known, and nothing was sent
    first = Recorder(verdict=False)
    p = poller(sender, endpoint_for(sender, mailbox_user), first, state)
    await p.poll_once()
    scope = first.seen[0].properties[SOURCE_SCOPE]
    keys = [exchange.properties[SOURCE_KEY] for exchange in first.seen]
    # a receiver had sent the 5th mail to someone before its attempt failed
    state.save_deliveries(scope, keys[4], [("out", "a@example.com", "sent", "250 ok")])

    statements: list[str] = []
    state._conn.set_trace_callback(statements.append)
    second = Recorder()
    p.handle = second
    result = await p.poll_once()
    state._conn.set_trace_callback(None)

    assert result.handled == 12
    told = {e.properties[SOURCE_KEY]: e.properties[SOURCE_DELIVERED] for e in second.seen}
    assert told == {key: key == keys[4] for key in keys}
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len([s for s in reads if "FROM deliveries" in s]) == 1
    assert len([s for s in reads if "message_id IN" in s]) == 1  # 12 small mails: one batch


def test_a_mail_known_to_have_no_rows_reads_none_but_those_still_waiting(
    tmp_path: Path,
) -> None:
    state = StateDB(tmp_path / "state.db")
    writer = DeliveryWriter(state)
    state.save_deliveries("mb", "1", [("out", "stored@example.com", "sent", "250 ok")])
    writer.add("mb", "1", [("out", "waiting@example.com", "sent", "250 ok")])  # no loop: saved
    statements: list[str] = []
    state._conn.set_trace_callback(statements.append)
    assert writer.rows("mb", "1", stored=False) == []
    assert not statements  # the source looked it up already: no query
    assert writer.rows("mb", "1") == [
        ("out", "stored@example.com", "sent", "250 ok"),
        ("out", "waiting@example.com", "sent", "250 ok"),
    ]
    state.close()
