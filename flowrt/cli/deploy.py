"""``flowrt deploy FLOW...`` and ``flowrt undeploy NAME``."""

from __future__ import annotations

import time

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.dsl import ParseResult, parse_file
from flowrt.dsl.diagnostics import render_all
from flowrt.dsl.values import parse_duration
from flowrt.errors import FlowError, UsageError
from flowrt.runtime.references import check_references
from flowrt.runtime.status import ERROR, STARTED, read_status
from flowrt.security import TenantSecurity
from flowrt.store import is_shared, open_deployments
from flowrt.tenant import Tenant


def _seconds(text: str) -> float:
    duration = parse_duration(text)
    if duration is None:
        raise UsageError(f"--wait: bad duration {text!r} (e.g. 30s)")
    return duration.total_seconds()


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--wait",
    "wait_for",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="How long to wait for a running runtime to report the outcome (0s: don't).",
)
@pass_cli
def deploy(cli: CliContext, files: tuple[str, ...], wait_for: str) -> None:
    """Validate flow files, check what they need from the tenant, and deploy them.

    Nothing is deployed unless every file is valid and every credential, keystore alias
    and location ID they name exists. An unchanged flow is not deployed again.
    """
    timeout = _seconds(wait_for)
    tenant = cli.tenant
    results = [parse_file(path) for path in files]
    _report(results)
    if any(not r.ok for r in results):
        raise FlowError("nothing was deployed: fix the errors above")
    security = TenantSecurity.open(tenant)
    missing = sorted(
        (
            problem
            for result in results
            for flow in result.flows
            for problem in check_references(flow, security)
        ),
        key=lambda d: (d.file, d.line, d.column),
    )
    if missing:
        sources = {r.file: r.source for r in results}
        click.echo(render_all(missing, sources), err=True)
        raise FlowError("nothing was deployed: the tenant lacks what the flows above name")
    store = open_deployments(tenant)
    try:
        outcomes = [store.deploy(flow) for result in results for flow in result.flows]
    finally:
        store.close()
    for outcome in outcomes:
        if outcome.changed:
            click.echo(f"deployed {outcome.name} version {outcome.version}")
        else:
            click.echo(f"{outcome.name} is unchanged (version {outcome.version})")
    _await_runtime(tenant, {o.name: o.version for o in outcomes}, timeout)


def _report(results: list[ParseResult]) -> None:
    for result in results:
        if result.diagnostics:
            click.echo(result.render(), err=True)


def _await_runtime(tenant: Tenant, expected: dict[str, int], timeout: float) -> None:
    if is_shared(tenant):
        click.echo(
            "stored in the shared store: every running node picks it up within a "
            "second (`flowrt status` shows them)"
        )
        return
    status = read_status(tenant)
    if status is None or not status.alive():
        click.echo("no runtime is running on this tenant; `flowrt run` starts the flows")
        return
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    failed = False
    while pending and time.monotonic() < deadline:
        status = read_status(tenant)
        if status is None or not status.alive():
            click.echo("the runtime stopped before reporting", err=True)
            raise SystemExit(1)
        for name, version in list(pending.items()):
            flow = status.flows.get(name)
            if flow is None or flow.version != version or flow.state not in (STARTED, ERROR):
                continue
            del pending[name]
            if flow.state == STARTED:
                click.echo(f"{name}: STARTED (version {version})")
            else:
                failed = True
                click.echo(f"{name}: ERROR (version {version}): {flow.reason}", err=True)
        time.sleep(0.1)
    for name in pending:
        click.echo(f"{name}: the runtime did not report within {timeout:g}s", err=True)
    if failed or pending:
        raise SystemExit(1)


@click.command()
@click.argument("name")
@pass_cli
def undeploy(cli: CliContext, name: str) -> None:
    """Stop and remove a deployed flow (its version history stays in the tenant)."""
    store = open_deployments(cli.tenant)
    try:
        removed = store.undeploy(name)
    finally:
        store.close()
    click.echo(f"undeployed {name} (was version {removed.version})")


COMMANDS: list[click.Command] = [deploy, undeploy]
