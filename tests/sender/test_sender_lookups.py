"""What the state store is asked per fetched batch, not per mail: which mails have
recipients' rows and which Message-IDs were done under another UIDVALIDITY. A mail whose
receivers sent it before is still told so, also when the batch's answer grew old before
the mail's turn came (a paused node whose mailbox another took over)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flowrt.adapters.mail.model import PostProcess
from flowrt.adapters.mail.sender import poller as poller_module
from flowrt.adapters.mail.sender.poller import MailPoller
from flowrt.engine.exchange import Exchange
from flowrt.runtime.deliveries import DeliveryWriter
from flowrt.runtime.state import StateDB
from flowrt.source_state import SOURCE_DELIVERED, SOURCE_KEY, SOURCE_SCOPE
from tests.sender.conftest import Recorder, endpoint_for, fill, make_mail, make_sender, poller
from tests.servers import DovecotServer, MailboxUser


async def failed_once(
    dovecot: DovecotServer, user: MailboxUser, state: StateDB, count: int
) -> tuple[MailPoller, str, list[str]]:
    """``count`` mails whose first poll failed them all (their keys are then known, and
    nothing was sent): the poller (one mail at a time), the mailbox's scope, the keys."""
    fill(dovecot, user, [make_mail() for _ in range(count)])
    sender = make_sender(port=dovecot.imap_port, post_process=PostProcess("keep"))
    first = Recorder(verdict=False)
    p = poller(sender, endpoint_for(sender, user), first, state)
    await p.poll_once()
    keys = [exchange.properties[SOURCE_KEY] for exchange in first.seen]
    return p, first.seen[0].properties[SOURCE_SCOPE], keys


async def test_a_batch_asks_the_state_store_once_not_once_per_mail(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    p, scope, keys = await failed_once(dovecot, mailbox_user, state, 12)
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
    assert len([s for s in reads if "FROM deliveries" in s]) == 1  # 12 mails: one lookup
    assert len([s for s in reads if "message_id IN" in s]) == 1


async def test_a_mail_whose_turn_comes_late_is_looked_up_again(
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    state: StateDB,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p, scope, keys = await failed_once(dovecot, mailbox_user, state, 3)
    last = keys[2]

    monkeypatch.setattr(poller_module, "FRESH_FOR", 0.05)

    def meanwhile(exchange: Exchange) -> bool:
        if exchange.properties[SOURCE_KEY] != last and not state.delivered(scope, [last]):
            # while this node is slow (or paused), another one sends the last mail
            state.save_deliveries(scope, last, [("out", "a@example.com", "sent", "250 ok")])
            time.sleep(0.1)
        return True

    second = Recorder(verdict=meanwhile)
    p.handle = second  # one mail at a time (in-flight 1): the last one's turn comes late
    await p.poll_once()
    told = {e.properties[SOURCE_KEY]: e.properties[SOURCE_DELIVERED] for e in second.seen}
    assert told[last] is True  # asked again: the batch's "no rows" was too old by then


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
