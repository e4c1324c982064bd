"""`flowrt deadletter list|replay`: messages whose attempts are over, and putting one back.

A dead letter is a message whose last MPL entry is ESCALATED with the property
``dead-letter`` (where it went); the mail itself is in its dead-letter place (by default
still in the mailbox, with the keyword ``$flowrt-dead``). ``replay`` asks the flow's poller
to hand it over once more: its attempts start over, and recipients that already have it do
not get it again.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.errors import MplError, NotFoundError
from flowrt.mpl._time import iso
from flowrt.mpl.model import MplEntry
from flowrt.runtime.ending import DEAD_LETTER, SOURCE_PROPERTY
from flowrt.store import MplBackend, open_mpl, open_state


def _first(entry: MplEntry, name: str) -> str:
    values = entry.custom_properties.get(name, ())
    return values[-1] if values else ""


def _row(entry: MplEntry) -> dict[str, object]:
    error = entry.error
    return {
        "message_id": entry.message_id,
        "flow": entry.flow,
        "ended": iso(entry.log_end),
        "place": _first(entry, DEAD_LETTER),
        "attempts": _first(entry, "attempts"),
        "source": _first(entry, SOURCE_PROPERTY),
        "replayed": _first(entry, "replayed") or None,
        "error": error.levels[-1].message if error and error.levels else None,
        "hint": error.hint if error else None,
    }


def _store(cli: CliContext) -> MplBackend | None:
    return open_mpl(cli.tenant, create=False)


@click.group("deadletter")
def deadletter() -> None:
    """Messages that ended in their dead-letter place after their last attempt."""


@deadletter.command("list")
@click.option("--flow", metavar="NAME", help="Only this flow's dead letters.")
@click.option("--all", "everything", is_flag=True, help="Include those already replayed.")
@format_option
@pass_cli
def list_(cli: CliContext, flow: str | None, everything: bool, fmt: str) -> None:
    """List dead letters, oldest first: MPL message ID, flow, where it went, error, hint."""
    store = _store(cli)
    rows: list[dict[str, object]] = []
    if store is not None:
        with store:
            found = store.dead_letters(flow=flow, include_replayed=everything)
        rows = [_row(entry) for _, entry in found]
    if fmt == "json":
        print_json(rows)
        return
    print_table(rows, ["message_id", "flow", "ended", "attempts", "place", "error"])


@deadletter.command("replay")
@click.argument("message_id", metavar="ID")
@pass_cli
def replay(cli: CliContext, message_id: str) -> None:
    """Put the dead letter ID (its MPL message ID, or a unique prefix) back for one more
    try: the flow's poller hands it over at its next poll, with its attempts starting over."""
    store = _store(cli)
    if store is None:
        raise MplError(f"no MPL entry with message ID {message_id!r}: nothing recorded yet")
    with store:
        entry = store.get(message_id)
        place = _first(entry, DEAD_LETTER)
        if not place:
            raise NotFoundError(
                f"message {entry.message_id} is not a dead letter (status {entry.status})",
                hint="see `flowrt deadletter list`",
            )
        if _first(entry, "replayed"):
            raise MplError(
                f"dead letter {entry.message_id} was replayed already "
                f"({_first(entry, 'replayed')})",
                hint="its new attempt has an MPL entry of its own; see `flowrt mpl list`",
            )
        scope, _, key = _first(entry, SOURCE_PROPERTY).partition(" ")
        if not key:
            raise MplError(f"dead letter {entry.message_id} does not name its mailbox")
        if place.startswith(("delete", "folder")):
            where = "was deleted" if place.startswith("delete") else f"was moved ({place})"
            raise MplError(
                f"dead letter {entry.message_id} {where}: flowrt cannot put it back",
                hint="move the mail back into the flow's folder by hand: it is a new mail "
                "there and is handed over again",
            )
        state = open_state(cli.tenant)
        assert state is not None  # create=True opens or raises
        try:
            state.request_replay(scope, key, message_id=entry.message_id)
        finally:
            state.close()
        store.add_property(entry.message_id, "replayed", iso(datetime.now(UTC)) or "")
    click.echo(
        f"dead letter {entry.message_id} put back: flow {entry.flow} hands it over again at "
        "its next poll"
    )


COMMANDS = [deadletter]
