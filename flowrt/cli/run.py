"""``flowrt run`` (the runtime process) and ``flowrt status``."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.dsl.values import parse_duration
from flowrt.errors import UsageError
from flowrt.runtime.deployments import Deployments
from flowrt.runtime.state import StateDB
from flowrt.runtime.status import read_status


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
@pass_cli
def run(cli: CliContext, once: bool, due: bool, grace: str, log_format: str) -> None:
    """Run every deployed flow in the foreground, picking up deploys as they happen."""
    from flowrt import logs
    from flowrt.runtime.process import Runtime

    if due and not once:
        raise UsageError("--due needs --once (a running runtime follows every schedule itself)")
    grace_time = parse_duration(grace)
    if grace_time is None:
        raise UsageError(f"--grace: bad duration {grace!r} (e.g. 30s)")
    tenant = cli.tenant
    logs.configure(json=None if log_format == "auto" else log_format == "json")
    runtime = Runtime(tenant, grace=grace_time.total_seconds())
    code = asyncio.run(runtime.run(once=once, due=due))
    raise SystemExit(code)


@click.command()
@click.argument("name", required=False)
@format_option
@pass_cli
def status(cli: CliContext, name: str | None, fmt: str) -> None:
    """Each deployed flow: version, state, last poll, messages, last error; and held locks."""
    tenant = cli.tenant
    runtime = read_status(tenant)
    alive = runtime is not None and runtime.alive()
    deployments = Deployments(tenant).all()
    if name is not None and name not in {d.name for d in deployments}:
        raise UsageError(f"no deployed flow named {name!r}")
    rows: list[dict[str, Any]] = []
    for deployment in deployments:
        if name is not None and deployment.name != name:
            continue
        # a stopped runtime's last report still tells the counts and the last error
        flow = runtime.flows.get(deployment.name) if runtime else None
        if flow is not None and flow.version != deployment.version:
            flow = None
        state = (flow.state if flow else "PENDING") if alive else "NOT RUNNING"
        rows.append(
            {
                "flow": deployment.name,
                "version": deployment.version,
                "state": state,
                "last_poll": flow.last_poll if flow else "",
                "completed": flow.completed if flow else 0,
                "failed": flow.failed if flow else 0,
                "last_error": (flow.reason or flow.last_error) if flow else "",
            }
        )
    state_db = StateDB.open(tenant, create=False) if tenant.state_path.exists() else None
    locks = state_db.locks() if state_db is not None else []
    if state_db is not None:
        state_db.close()
    if fmt == "json":
        print_json(
            {
                "runtime": None
                if runtime is None
                else {
                    "alive": alive,
                    "pid": runtime.pid,
                    "host": runtime.host,
                    "started_at": runtime.started_at,
                    "heartbeat_at": runtime.heartbeat_at,
                },
                "flows": rows,
                "locks": [{"key": lock.key, "holder": lock.describe()} for lock in locks],
            }
        )
        return
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
    print_table(
        rows, ["flow", "version", "state", "last_poll", "completed", "failed", "last_error"]
    )
    if locks:
        click.echo()
        print_table(
            [{"lock": lock.key, "holder": lock.describe()} for lock in locks], ["lock", "holder"]
        )


COMMANDS: list[click.Command] = [run, status]
