"""``flowrt run`` (the runtime process) and ``flowrt status``."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import click

from flowrt.cli._complete import complete_flow_names
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.dsl.values import parse_duration
from flowrt.errors import UsageError
from flowrt.runtime.report import (
    FLOW_COLUMNS,
    PROCESS_COLUMNS,
    StatusReport,
    poll_failures_report,
    status_report,
)
from flowrt.store import is_shared


@click.command()
@click.option(
    "--once",
    is_flag=True,
    help="Poll every deployed flow once now, whatever its schedule, then exit.",
)
@click.option(
    "--due",
    is_flag=True,
    help="With --once: poll only the flows whose schedule (every, daily at, cron) has a run "
    "due since their last poll recorded in the state DB; idle flows and flows whose last "
    "poll failed are always due. For a cron job or timer that runs flowrt every few minutes.",
)
@click.option(
    "--grace",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="On SIGTERM/Ctrl-C, how long the mail in hand may take to finish.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="auto: JSON lines unless stderr is a terminal.",
)
@click.option(
    "--http",
    "address",
    metavar="HOST:PORT",
    help="Also serve the web monitor, JSON API, /metrics and health endpoints here "
    "(default: the tenant's `flowrt monitor settings`).",
)
@click.option(
    "--tls-alias", metavar="ALIAS", help="Serve the monitor over HTTPS with this key pair."
)
@click.option(
    "--node",
    metavar="NAME",
    help="This runtime node's name (PostgreSQL store: several nodes share the tenant; "
    "default: the host name).",
)
@click.option(
    "--lease",
    metavar="DURATION",
    help="How long a mailbox lease lasts unless renewed: a dead node's mailboxes are taken "
    "over within it (default 2m).",
)
@pass_cli
def run(
    cli: CliContext,
    once: bool,
    due: bool,
    grace: str,
    log_format: str,
    address: str | None,
    tls_alias: str | None,
    node: str | None,
    lease: str | None,
) -> None:
    """Run every deployed flow in the foreground, picking up deploys as they happen."""
    from flowrt import logs
    from flowrt.runtime.process import Runtime, allow_open_files

    if due and not once:
        raise UsageError("--due needs --once (a running runtime follows every schedule itself)")
    grace_time = parse_duration(grace)
    if grace_time is None:
        raise UsageError(f"--grace: bad duration {grace!r} (e.g. 30s)")
    lease_time = None
    if lease is not None:
        parsed = parse_duration(lease)
        if parsed is None or parsed.total_seconds() < 1:
            raise UsageError(f"--lease: bad duration {lease!r} (e.g. 30s, at least 1s)")
        lease_time = parsed.total_seconds()
    if node is not None and not _NODE_NAME.fullmatch(node):
        raise UsageError(f"--node: {node!r} is not a node name (letters, digits, . _ -)")
    tenant = cli.tenant
    if node is not None and not is_shared(tenant):
        raise UsageError(
            "--node needs a PostgreSQL store: this tenant keeps its store in SQLite files, "
            "which one runtime uses at a time",
            hint="create the tenant with `flowrt init --store postgresql://...`",
        )
    logs.configure(json=None if log_format == "auto" else log_format == "json")
    from flowrt.monitor.server import MonitorSettings
    from flowrt.runtime.starter import WorkerStarter

    allow_open_files()  # before the fork below: the workers it forks inherit the limit
    # before anything runs or opens: what forks the worker processes of `workers N` flows
    # (--once polls in this process; on PostgreSQL, reading the deployments would start the
    # pool's threads before the fork, so a node starts its workers as new processes)
    starter = None if once or is_shared(tenant) else WorkerStarter.for_tenant(tenant)
    try:
        settings = MonitorSettings.load(tenant)
        runtime = Runtime(
            tenant,
            grace=grace_time.total_seconds(),
            http=None if once else address or settings.http,
            tls_alias=tls_alias or settings.tls_alias,
            node=node,
            lease=lease_time,
            log_json=None if log_format == "auto" else log_format == "json",
            starter=starter,
        )
        code = asyncio.run(runtime.run(once=once, due=due))
    finally:
        if starter is not None:
            starter.close()
    raise SystemExit(code)


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@click.command()
@click.argument("name", required=False, shell_complete=complete_flow_names)
@click.option(
    "--failures",
    is_flag=True,
    help="List the polls that could not run (connect, TLS, login, folder, lock), newest first.",
)
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="With --failures: how many, newest first.",
)
@format_option
@pass_cli
def status(cli: CliContext, name: str | None, failures: bool, limit: int, fmt: str) -> None:
    """Each deployed flow: version, state, last poll, messages, last error with its chain
    and hint; and held locks. With --failures: the poll-failure log."""
    if failures:
        _failures(cli, name, limit, fmt)
        return
    report = status_report(cli.tenant, name)
    if report.nodes is not None:
        _shared_status(report, fmt)
        return
    if fmt == "json":
        print_json(report.to_dict())
        return
    runtime, alive, rows, locks = report.runtime, report.alive, report.flows, report.locks
    if alive and runtime is not None:
        click.echo(
            f"runtime: running (pid {runtime.pid} on {runtime.host} since {runtime.started_at})"
        )
    elif runtime is not None:
        click.echo(
            f"runtime: not running (the last one, pid {runtime.pid}, reported at "
            f"{runtime.heartbeat_at}; start one with `flowrt run`)"
        )
    else:
        click.echo("runtime: not running (start it with `flowrt run`)")
    click.echo()
    print_table(rows, FLOW_COLUMNS)
    for row in rows:
        if row["chain"] or row["hint"]:
            click.echo(f"\n{row['flow']}: last error")
            if row["chain"]:
                click.echo(str(row["chain"]))
            if row["hint"]:
                click.echo(f"hint: {row['hint']}")
        if row["warning"]:
            click.echo(f"warning: flow {row['flow']}: {row['warning']}")
    _processes(rows)
    if any(row["dead_letters"] for row in rows):
        click.echo("dead letters: see `flowrt deadletter list`")
    if locks:
        click.echo()
        print_table(
            [{"lock": lock.key, "holder": lock.describe()} for lock in locks], ["lock", "holder"]
        )


def _processes(rows: list[dict[str, Any]]) -> None:
    """Each process of the flows with ``workers N``, below the flows."""
    for row in rows:
        if row["processes"]:
            click.echo(f"\n{row['flow']}: {len(row['processes'])} processes (workers)")
            print_table(row["processes"], PROCESS_COLUMNS)


def _failures(cli: CliContext, name: str | None, limit: int, fmt: str) -> None:
    found = poll_failures_report(cli.tenant, name, limit=limit)
    if fmt == "json":
        print_json({"failures": [f.to_dict() for f in found]})
        return
    if not found:
        click.echo("no failed polls recorded")
        return
    for i, failure in enumerate(found):
        at = dt.datetime.fromtimestamp(failure.at, dt.UTC).isoformat(timespec="seconds")
        if i:
            click.echo()
        click.echo(f"{at}  {failure.flow or failure.poller}  {failure.kind}")
        click.echo(failure.chain)
        if failure.hint:
            click.echo(f"hint: {failure.hint}")


def _shared_status(report: StatusReport, fmt: str) -> None:
    """Nodes, the flows with the node that holds each one's mailbox, and the leases."""
    data = report.to_dict()
    if fmt == "json":
        print_json(data)
        return
    node_rows, rows, lock_rows = data["nodes"], data["flows"], data["locks"]
    running = sum(1 for r in node_rows if r["state"] == "running")
    click.echo(f"runtime: {running} node(s) running (store: PostgreSQL)")
    if node_rows:
        click.echo()
        print_table(node_rows, ["node", "state", "host", "pid", "since", "heartbeat", "holds"])
    click.echo()
    print_table(
        rows,
        ["flow", "version", "state", "node", "held_since", "last_poll", "completed", "failed"],
    )
    _processes(rows)
    if lock_rows:
        click.echo()
        print_table(lock_rows, ["lock", "node", "since", "expires", "epoch"])


COMMANDS: list[click.Command] = [run, status]
