"""Recipients' rows are written together, one loop turn after their SMTP replies, and
before any mail record (the group commit's durable step)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowrt.errors import TenantError
from flowrt.recipients import RecipientLedger
from flowrt.runtime.deliveries import DeliveryWriter
from flowrt.runtime.state import StateDB


def test_rows_of_one_turn_are_durable_at_the_next(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.db")
    writer = DeliveryWriter(state)

    async def two_mails() -> list[list[tuple[str, str, str, str]]]:
        a = RecipientLedger(save=writer.saver("mb", "1"))
        b = RecipientLedger(save=writer.saver("mb", "2"))
        a.record("out", [("x@example.com", "sent", "250 ok")])
        b.record("out", [("y@example.com", "pending", "451 later")])
        before = state.deliveries("mb", "1")
        await asyncio.sleep(0)  # the next turn of the loop
        return [before, state.deliveries("mb", "1"), state.deliveries("mb", "2")]

    before, one, two = asyncio.run(two_mails())
    assert before == []
    assert one == [("out", "x@example.com", "sent", "250 ok")]
    assert two == [("out", "y@example.com", "pending", "451 later")]
    state.close()


def test_a_failed_write_keeps_the_rows_for_the_next_flush(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.db")
    writer = DeliveryWriter(state)
    real = state.save_deliveries
    failing = {"on": True}

    def save(mailbox: str, key: str, rows: object) -> None:
        if failing["on"]:
            raise TenantError("runtime state database: disk I/O error")
        real(mailbox, key, rows)  # type: ignore[arg-type]

    state.save_deliveries = save  # type: ignore[method-assign]

    async def record() -> None:
        RecipientLedger(save=writer.saver("mb", "1")).record("out", [("x@e.com", "sent", "")])

    asyncio.run(record())  # the loop's own write failed and was logged
    with pytest.raises(TenantError):
        writer.flush()  # what the group commit calls before the record: it fails too
    # the mail's next attempt, while the store still refuses the write, knows who has it
    assert writer.rows("mb", "1") == [("out", "x@e.com", "sent", "")]
    assert RecipientLedger(writer.rows("mb", "1")).finished("out", "x@e.com")
    failing["on"] = False
    writer.flush()
    assert state.deliveries("mb", "1") == [("out", "x@e.com", "sent", "")]
    state.close()
