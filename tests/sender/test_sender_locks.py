"""One poller per mailbox: contention, expiry, a lease taken away, and `flowrt locks`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.engine.exchange import Exchange
from flowrt.runtime.state import StateDB
from flowrt.tenant import MARKER, Tenant
from tests.sender.conftest import Recorder, endpoint_for, fill, make_mail, make_sender, poller
from tests.servers import DovecotServer, MailboxUser


async def test_second_poller_skips_and_says_who_holds_the_mailbox(
    dovecot: DovecotServer, mailbox_user: MailboxUser, tmp_path: Path
) -> None:
    fill(dovecot, mailbox_user, [make_mail("a"), make_mail("b")])
    sender = make_sender(port=dovecot.imap_port)
    endpoint = endpoint_for(sender, mailbox_user)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(exchange: Exchange) -> bool:
        entered.set()
        await release.wait()
        return True

    with StateDB(tmp_path / "s.sqlite") as one, StateDB(tmp_path / "s.sqlite") as two:
        first = poller(sender, endpoint, slow, one, owner="runtime-1", name="flow-1")
        second_handle = Recorder()
        second = poller(sender, endpoint, second_handle, two, owner="runtime-2", name="flow-2")
        running = asyncio.ensure_future(first.poll_once())
        await asyncio.wait_for(entered.wait(), 5)
        skipped = await second.poll_once()
        assert skipped.busy and skipped.handled == 0 and second_handle.seen == []
        assert "is being polled by runtime-1" in skipped.busy
        assert f"flowrt locks release {first.lock_key}" in skipped.busy
        assert second.health.note == skipped.busy
        assert second.health.consecutive_failures == 0  # busy is not a failure
        release.set()
        assert (await asyncio.wait_for(running, 10)).handled == 2
        assert (await second.poll_once()).busy == ""  # released at the end of the poll


async def test_an_expired_lease_is_taken_over(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = make_sender(port=dovecot.imap_port)
    p = poller(sender, endpoint_for(sender, mailbox_user), Recorder(), state)
    state.acquire_lock(p.lock_key, "stuck-runtime", 0.2)
    assert (await p.poll_once()).busy
    await asyncio.sleep(0.3)
    assert (await p.poll_once()).busy == ""


async def test_a_lease_taken_away_stops_the_poll(
    dovecot: DovecotServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    fill(dovecot, mailbox_user, [make_mail(f"l{i}") for i in range(4)])
    sender = make_sender(port=dovecot.imap_port)
    handled: list[str] = []
    p = poller(sender, endpoint_for(sender, mailbox_user), None, state, lock_ttl=0.3)

    async def handle(exchange: Exchange) -> bool:
        handled.append(exchange.headers.get("Subject") or "")
        if len(handled) == 1:  # an operator releases it; another runtime takes it
            state.force_release(p.lock_key)
            state.acquire_lock(p.lock_key, "other-runtime", 60)
            await asyncio.sleep(0.25)  # the next renewal notices
        return True

    p.handle = handle
    result = await p.poll_once()
    assert result.lock_lost and handled == ["l0"]
    assert result.post_processed == 1  # what was done is still marked
    assert [lock.owner for lock in state.locks()] == ["other-runtime"]


def test_lock_of_a_dead_local_process_is_taken_over(state: StateDB, tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(gone.stdout)
    state.acquire_lock("box", "crashed", 600)
    conn = sqlite3.connect(state.path)
    conn.execute("UPDATE locks SET pid = ? WHERE key = 'box'", (pid,))
    conn.commit()
    conn.close()
    taken, lease = state.acquire_lock("box", "restarted", 60)
    assert taken and lease.owner == "restarted"


# ----------------------------------------------------------------------------- CLI


def tenant_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tenant"
    root.mkdir()
    (root / MARKER).write_text("{}\n")
    return root


def run(tenant: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), "locks", *args])


def test_locks_list_and_release(tmp_path: Path) -> None:
    root = tenant_dir(tmp_path)
    assert run(root, "list").output.strip() == "(none)"  # no state DB yet
    with StateDB.open(Tenant(root)) as state:
        state.acquire_lock("u@mail.example/INBOX", "host:1:ab", 600, info="invoice-forward")
        state.acquire_lock("old@mail.example/INBOX", "host:2:cd", 0.01)
    time.sleep(0.02)
    listed = run(root, "list")
    assert listed.exit_code == 0
    assert "u@mail.example/INBOX" in listed.output and "invoice-forward" in listed.output
    rows = {row["key"]: row for row in json.loads(run(root, "list", "--format", "json").output)}
    assert rows["u@mail.example/INBOX"]["state"] == "held"
    assert rows["old@mail.example/INBOX"]["state"] == "expired"
    released = run(root, "release", "u@mail.example/INBOX")
    assert released.exit_code == 0
    assert "released lock u@mail.example/INBOX (held by host:1:ab" in released.output
    assert "still valid" in released.stderr
    assert "u@mail.example/INBOX" not in run(root, "list").output


def test_release_of_an_unknown_key_says_so(tmp_path: Path) -> None:
    root = tenant_dir(tmp_path)
    with StateDB.open(Tenant(root)) as state:
        state.acquire_lock("a@h/INBOX", "o", 600)
    result = run(root, "release", "nope@h/INBOX")
    assert result.exit_code == 1  # not found: the README's exit-code rule (issue 20)
    assert "error: no lock named 'nope@h/INBOX'" in result.stderr
    assert "flowrt locks list" in result.stderr and "a@h/INBOX" in result.stderr
