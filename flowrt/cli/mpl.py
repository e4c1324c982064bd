"""`flowrt mpl`: read the message-processing log (list, show, tail) and manage its retention."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import click

from flowrt.cli._complete import complete_flow_names
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.errors import MplError
from flowrt.mpl._time import format_duration, iso, parse_duration, parse_instant
from flowrt.mpl.follow import Follower
from flowrt.mpl.model import MplStatus
from flowrt.mpl.render import LIST_COLUMNS, render_entry, summary_row, tail_header, tail_line
from flowrt.mpl.store import DEFAULT_LIMIT, DEFAULT_RETENTION
from flowrt.store import MplBackend, is_shared, open_mpl

_STATUSES = [status.value for status in MplStatus]


# Option values are converted in callbacks (not ParamType subclasses, whose typing differs
# between click versions); a bad value is a click.BadParameter: exit 2, naming the option.


def _instant(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """``30m`` / ``2h`` / ``7d`` (that long ago) or an ISO timestamp (UTC if no offset)."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """``500ms``, ``30s``, ``5m``, ``2h``, ``30d``, ``1w``."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _properties(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    """``NAME=VALUE`` pairs for custom header properties."""
    pairs = []
    for value in values:
        name, sep, prop_value = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", ctx=ctx, param=param)
        pairs.append((name, prop_value))
    return pairs


_status_option = click.option(
    "--status",
    type=click.Choice(_STATUSES, case_sensitive=False),
    help="Only entries with this status.",
)
_flow_option = click.option(
    "--flow", metavar="NAME", help="Only entries of this flow.", shell_complete=complete_flow_names
)


def _open(cli: CliContext, *, create: bool = False) -> MplBackend | None:
    """The tenant's MPL store; None when nothing was recorded yet and ``create`` is false."""
    return open_mpl(cli.tenant, create=create)


@click.group("mpl")
def mpl_group() -> None:
    """Read the message-processing log (MPL): what happened to each message."""


@mpl_group.command("list")
@_flow_option
@_status_option
@click.option(
    "--since",
    metavar="TIME",
    callback=_instant,
    help="Started at or after: 30m, 2h, 7d (ago) or an ISO time (UTC unless it has an offset).",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=_instant,
    help="Started at or before: 30m, 2h, 7d (ago) or an ISO time.",
)
@click.option("--id", "message_id", metavar="ID", help="Message ID, or the start of one.")
@click.option(
    "--property",
    "properties",
    metavar="NAME=VALUE",
    multiple=True,
    callback=_properties,
    help="Custom header property NAME=VALUE (repeat: all must match).",
)
@click.option(
    "--kind",
    type=click.Choice(["all", "real", "simulation"]),
    default="all",
    show_default=True,
    help="real: entries of `flowrt run`; simulation: entries of `flowrt simulate`.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="At most this many entries (the newest).",
)
@format_option
@pass_cli
def list_command(
    cli: CliContext,
    flow: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    message_id: str | None,
    properties: list[tuple[str, str]],
    kind: str,
    limit: int,
    fmt: str,
) -> None:
    """List MPL entries, newest first. Times are UTC."""
    if since is not None and until is not None and since > until:
        raise click.BadParameter(
            f"--since ({iso(since)}) is after --until ({iso(until)})", param_hint="'--since'"
        )
    store = _open(cli)
    summaries = []
    if store is not None:
        with store:
            summaries = store.list_entries(
                flow=flow,
                status=None if status is None else MplStatus(status),
                since=since,
                until=until,
                message_id=message_id,
                properties=properties,
                limit=limit,
                simulation=None if kind == "all" else kind == "simulation",
            )
    if fmt == "json":
        print_json([s.to_dict() for s in summaries])
    else:
        print_table([summary_row(s) for s in summaries], LIST_COLUMNS)


@mpl_group.command("show")
@click.argument("message_id", metavar="ID")
@format_option
@pass_cli
def show_command(cli: CliContext, message_id: str, fmt: str) -> None:
    """Show everything recorded for one message: properties, runs and steps, log lines, the
    error chain and its hint. ID may be a unique prefix of at least 8 characters."""
    store = _open(cli)
    if store is None:
        raise MplError(
            f"no MPL entry with message ID {message_id!r}: nothing has been recorded yet",
            hint="entries appear when `flowrt run` or `flowrt simulate` process messages",
        )
    with store:
        entry = store.get(message_id)
    if fmt == "json":
        print_json(entry.to_dict())
    else:
        click.echo(render_entry(entry))


@mpl_group.command("tail")
@_flow_option
@_status_option
@click.option(
    "--interval",
    metavar="DURATION",
    default="1s",
    show_default=True,
    callback=_duration,
    help="How often to look.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many entries.")
@click.option("--timeout", metavar="DURATION", callback=_duration, help="Stop after this long.")
@format_option
@pass_cli
def tail_command(
    cli: CliContext,
    flow: str | None,
    status: str | None,
    interval: timedelta,
    count: int | None,
    timeout: timedelta | None,
    fmt: str,
) -> None:
    """Follow the MPL: print each entry as it begins or changes status (Ctrl-C stops).
    With --format json, one JSON object per line."""
    path = cli.tenant.mpl_path
    shared = is_shared(cli.tenant)
    deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
    wanted = None if status is None else MplStatus(status)
    printed = 0
    if fmt == "text":
        click.echo(tail_header())
    # A log that is created after we started is new from its first entry.
    start_row = None if shared or path.exists() else 0
    store: MplBackend | None = None
    follower: Follower | None = None
    try:
        while True:
            if follower is None and (shared or path.exists()):
                store = open_mpl(cli.tenant)
                assert store is not None
                follower = Follower(store, flow=flow, status=wanted, start_row=start_row)
            for summary in follower.poll() if follower is not None else []:
                if fmt == "json":
                    click.echo(json.dumps(summary.to_dict(), separators=(",", ":")))
                else:
                    click.echo(tail_line(summary))
                printed += 1
                if count is not None and printed >= count:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                return
            pause = interval.total_seconds()
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)
    except KeyboardInterrupt:
        return
    finally:
        if store is not None:
            store.close()


@mpl_group.command("purge")
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_duration,
    help="Remove entries that ended longer ago than this (default: the retention).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@format_option
@pass_cli
def purge_command(cli: CliContext, older_than: timedelta | None, dry_run: bool, fmt: str) -> None:
    """Remove old MPL entries now. Without --older-than, the retention setting decides
    (see `flowrt mpl retention`)."""
    store = _open(cli)
    removed = 0
    age = older_than
    if store is not None:
        with store:
            age = store.retention() if older_than is None else older_than
            cutoff = datetime.now(UTC) - age
            removed = store.count_purgeable(cutoff) if dry_run else store.purge(cutoff)
    if fmt == "json":
        print_json(
            {
                "removed": 0 if dry_run else removed,
                "would_remove": removed if dry_run else None,
                "older_than": None if age is None else format_duration(age),
                "dry_run": dry_run,
            }
        )
        return
    noun = "entry" if removed == 1 else "entries"
    if age is None:
        click.echo(
            f"{'would remove' if dry_run else 'removed'} 0 entries (nothing has been recorded yet)"
        )
    elif dry_run:
        click.echo(
            f"would remove {removed} {noun} that ended more than {format_duration(age)} ago "
            "(dry run: nothing removed)"
        )
    else:
        click.echo(f"removed {removed} {noun} that ended more than {format_duration(age)} ago")


@mpl_group.command("retention")
@click.option(
    "--set",
    "new_value",
    metavar="DURATION",
    callback=_duration,
    help="Keep entries this long, e.g. 30d.",
)
@format_option
@pass_cli
def retention_command(cli: CliContext, new_value: timedelta | None, fmt: str) -> None:
    """Show or set how long MPL entries are kept."""
    store = _open(cli, create=new_value is not None)
    value, default = DEFAULT_RETENTION, True
    if store is not None:
        with store:
            if new_value is not None:
                store.set_retention(new_value)
            stored = store.stored_retention()
        if stored is not None:
            value, default = stored, False
    if fmt == "json":
        print_json(
            {
                "retention": format_duration(value),
                "seconds": value.total_seconds(),
                "default": default,
                "changed": new_value is not None,
            }
        )
    elif new_value is not None:
        click.echo(f"retention set to {format_duration(new_value)}")
    else:
        click.echo(f"retention: {format_duration(value)}{' (default)' if default else ''}")


COMMANDS: list[click.Command] = [mpl_group]
