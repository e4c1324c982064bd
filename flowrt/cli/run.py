"""``flowrt run`` (the runtime process) and ``flowrt status``."""

from __future__ import annotations

import asyncio

import click

from flowrt.cli._complete import complete_flow_names
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.dsl.values import parse_duration
from flowrt.errors import UsageError
from flowrt.runtime.report import FLOW_COLUMNS, status_report


@click.command()
@click.option("--once", is_flag=True, help="Poll each deployed flow once, then exit.")
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
@pass_cli
def run(
    cli: CliContext,
    once: bool,
    grace: str,
    log_format: str,
    address: str | None,
    tls_alias: str | None,
) -> None:
    """Run every deployed flow in the foreground, picking up deploys as they happen."""
    from flowrt import logs
    from flowrt.runtime.process import Runtime

    grace_time = parse_duration(grace)
    if grace_time is None:
        raise UsageError(f"--grace: bad duration {grace!r} (e.g. 30s)")
    tenant = cli.tenant
    logs.configure(json=None if log_format == "auto" else log_format == "json")
    from flowrt.monitor.server import MonitorSettings

    settings = MonitorSettings.load(tenant)
    runtime = Runtime(
        tenant,
        grace=grace_time.total_seconds(),
        http=None if once else address or settings.http,
        tls_alias=tls_alias or settings.tls_alias,
    )
    code = asyncio.run(runtime.run(once=once))
    raise SystemExit(code)


@click.command()
@click.argument("name", required=False, shell_complete=complete_flow_names)
@format_option
@pass_cli
def status(cli: CliContext, name: str | None, fmt: str) -> None:
    """Each deployed flow: version, state, last poll, messages, last error; and held locks."""
    report = status_report(cli.tenant, name)
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
        if row["warning"]:
            click.echo(f"warning: flow {row['flow']}: {row['warning']}")
    if any(row["dead_letters"] for row in rows):
        click.echo("dead letters: see `flowrt deadletter list`")
    if locks:
        click.echo()
        print_table(
            [{"lock": lock.key, "holder": lock.describe()} for lock in locks], ["lock", "holder"]
        )


COMMANDS: list[click.Command] = [run, status]
