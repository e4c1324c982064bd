"""`flowrt locks list|release`: the mailbox lease locks in the tenant's runtime state.

A mailbox is polled by one runtime at a time; its poller holds a lease lock that it renews
while it polls and releases when it is done. A lease that is not renewed expires by itself,
so ``release`` is for the rare case of a stuck runtime whose lease is still being renewed
(or when waiting for the expiry is not an option).
"""

from __future__ import annotations

import datetime as dt
import time

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.errors import NotFoundError
from flowrt.source_state import LockInfo
from flowrt.store import open_state


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _row(lock: LockInfo, now: float) -> dict[str, object]:
    return {
        "key": lock.key,
        "owner": lock.owner,
        "host": lock.host,
        "pid": lock.pid,
        "info": lock.info,
        "acquired": _iso(lock.acquired),
        "renewed": _iso(lock.renewed),
        "expires": _iso(lock.expires),
        "state": "expired" if lock.expired(now) else "held",
    }


def _locks(cli: CliContext) -> list[LockInfo]:
    state = open_state(cli.tenant, create=False)
    if state is None:  # no runtime ever ran here: no locks
        return []
    try:
        return state.locks()
    finally:
        state.close()


@click.group("locks")
def locks() -> None:
    """Mailbox locks held by runtimes (one poller per mailbox)."""


@locks.command("list")
@format_option
@pass_cli
def list_(cli: CliContext, fmt: str) -> None:
    """List locks: mailbox key, owner, lease times, held or expired."""
    now = time.time()
    rows = [_row(lock, now) for lock in _locks(cli)]
    if fmt == "json":
        print_json(rows)
        return
    print_table(rows, ["key", "state", "owner", "renewed", "expires", "info"])


@locks.command("release")
@click.argument("key")
@pass_cli
def release(cli: CliContext, key: str) -> None:
    """Release the lock KEY (as shown by `flowrt locks list`), whoever holds it."""
    removed: LockInfo | None = None
    existing: list[LockInfo] = []
    state = open_state(cli.tenant, create=False)
    if state is not None:
        try:
            removed = state.force_release(key)
            if removed is None:
                existing = state.locks()
        finally:
            state.close()
    if removed is None:
        known = ", ".join(lock.key for lock in existing[:5]) or "none"
        raise NotFoundError(
            f"no lock named {key!r}",
            hint=f"see `flowrt locks list` (locks now: {known})",
        )
    click.echo(f"released lock {key} (held by {removed.describe()})")
    if not removed.expired():
        click.echo(
            f"warning: the lease was still valid until {_iso(removed.expires)}; if that "
            "runtime is alive, it stops polling this mailbox at its next renewal",
            err=True,
        )


COMMANDS = [locks]
