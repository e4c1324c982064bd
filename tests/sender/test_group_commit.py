"""The group commit: endings that come together are written together, after the flush."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowrt.adapters.mail.sender.commit import GroupCommit
from flowrt.errors import TenantError
from flowrt.runtime.state import StateDB


async def test_one_flush_then_every_record_in_one_transaction(tmp_path: Path) -> None:
    events: list[str] = []
    with StateDB(tmp_path / "state.sqlite") as state:
        commits = GroupCommit(lambda: lambda: events.append("flush"), state.batch)

        async def ending(key: str) -> None:
            await commits.write(lambda: (events.append(key), state.record_done("box", key)))

        await asyncio.gather(*(ending(f"k{i}") for i in range(5)))
        assert events == ["flush", "k0", "k1", "k2", "k3", "k4"]
        records = state.records("box", [f"k{i}" for i in range(5)])
        assert all(r.done for r in records.values()) and len(records) == 5


async def test_a_record_that_fails_takes_only_itself_back(tmp_path: Path) -> None:
    with StateDB(tmp_path / "state.sqlite") as state:
        commits = GroupCommit(lambda: None, state.batch)

        def broken() -> None:
            with state._transaction("write a mail record") as conn:
                conn.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            commits.write(lambda: state.record_done("box", "a")),
            commits.write(broken),
            commits.write(lambda: state.record_done("box", "b")),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], TenantError)
        assert sorted(state.records("box", ["a", "b"])) == ["a", "b"]


async def test_no_record_is_written_when_the_flush_fails(tmp_path: Path) -> None:
    with StateDB(tmp_path / "state.sqlite") as state:

        def flush() -> None:
            raise OSError("disk gone")

        commits = GroupCommit(lambda: flush, state.batch)
        with pytest.raises(OSError, match="disk gone"):
            await commits.write(lambda: state.record_done("box", "a"))
        assert state.records("box", ["a"]) == {}


async def test_records_wait_until_the_group_is_due(tmp_path: Path) -> None:
    events: list[str] = []
    with StateDB(tmp_path / "state.sqlite") as state:
        expected = {"waiting": 3}
        commits = GroupCommit(
            lambda: lambda: events.append("flush"),
            state.batch,
            due=lambda waiting: waiting >= expected["waiting"],
        )
        first = asyncio.ensure_future(commits.write(lambda: state.record_done("box", "a")))
        second = asyncio.ensure_future(commits.write(lambda: state.record_done("box", "b")))
        for _ in range(5):
            await asyncio.sleep(0)
        assert events == [] and state.records("box", ["a", "b"]) == {}
        expected["waiting"] = 2  # say the third mail ended without a record
        commits.poke()
        await asyncio.gather(first, second)
        assert events == ["flush"]  # one flush for both
        assert sorted(state.records("box", ["a", "b"])) == ["a", "b"]
