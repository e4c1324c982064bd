"""``flowrt deploy FLOW... [--params FILE] [--dry-run]`` and ``flowrt undeploy NAME``."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import click

from flowrt.cli._complete import complete_flow_names
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json
from flowrt.dsl.diagnostics import render_all
from flowrt.dsl.values import parse_duration
from flowrt.errors import FlowError, UsageError
from flowrt.runtime.deployments import DeployOutcome
from flowrt.runtime.parameters import from_environment, read_param_file
from flowrt.runtime.prepare import Preparation, prepare
from flowrt.runtime.status import ERROR, STARTED, read_status
from flowrt.store import DeploymentStore, is_shared, open_deployments
from flowrt.tenant import Tenant


def _seconds(text: str) -> float:
    duration = parse_duration(text)
    if duration is None:
        raise UsageError(f"--wait: bad duration {text!r} (e.g. 30s)")
    return duration.total_seconds()


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--params",
    "params_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help='Parameter values (TOML: NAME = "value", [flow-name] tables); above the '
    "environment (FLOWRT_PARAM_NAME) and the tenant's sets (flowrt params set).",
)
@click.option("--dry-run", is_flag=True, help="Check everything and show what would be stored.")
@click.option(
    "--wait",
    "wait_for",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="How long to wait for a running runtime to report the outcome (0s: don't).",
)
@format_option
@pass_cli
def deploy(
    cli: CliContext,
    files: tuple[str, ...],
    params_file: str | None,
    dry_run: bool,
    wait_for: str,
    fmt: str,
) -> None:
    """Validate flow files, check what they need, and deploy them, scripts included.

    Nothing is deployed unless every file is valid, every parameter has a value, every
    credential, keystore alias and location ID they name exists, and every script imports
    from what is bundled. An unchanged flow is not deployed again.
    """
    timeout = _seconds(wait_for)
    tenant = cli.tenant
    param_file = read_param_file(params_file) if params_file else None
    prep = prepare(files, tenant, param_file=param_file, environment=from_environment())
    if prep.problems:
        click.echo(render_all(prep.problems, dict(prep.sources)), err=True)
    if not prep.ok:
        raise FlowError(_REFUSED[prep.stage])
    if dry_run:
        _show_dry_run(prep, open_deployments(tenant), fmt)
        return
    outcomes = publish(tenant, prep)
    text = fmt == "text"
    if text:
        for outcome in outcomes:
            if outcome.changed:
                click.echo(f"deployed {outcome.name} version {outcome.version}")
            else:
                click.echo(f"{outcome.name} is unchanged (version {outcome.version})")
    reports, ok = _await_runtime(tenant, {o.name: o.version for o in outcomes}, timeout, text)
    if not text:
        print_json(
            [
                {
                    "flow": o.name,
                    "version": o.version,
                    "changed": o.changed,
                    **reports.get(o.name, {"runtime": None, "reason": None}),
                }
                for o in outcomes
            ]
        )
    if not ok:
        raise SystemExit(1)


_REFUSED = {
    "validate": "nothing was deployed: fix the errors above",
    "params": "nothing was deployed: fix the parameters above",
    "tenant": "nothing was deployed: the tenant lacks what the flows above name",
    "scripts": "nothing was deployed: the scripts above cannot be loaded",
}


def _show_dry_run(prep: Preparation, store: DeploymentStore, fmt: str) -> None:
    rows: list[dict[str, Any]] = []
    for item in prep.flows:
        current = store.get(item.flow.name)
        rows.append(
            {
                "flow": item.flow.name,
                "file": item.flow.file,
                "version": 1 if current is None else current.version + 1,
                "current_version": None if current is None else current.version,
                "params": [
                    {"name": n, "value": v, "source": item.resolved.sources[n]}
                    for n, v in sorted(item.resolved.values.items())
                ],
                "defaults": sorted(
                    {use.name for use in item.flow.params if use.name not in item.resolved.values}
                ),
                "scripts": [dataclasses.asdict(ref) for ref in item.bundle.scripts],
                "script_files": {n: len(d) for n, d in sorted(item.bundle.files.items())},
            }
        )
    if fmt == "json":
        print_json({"dry_run": True, "flows": rows})
        return
    for row in rows:
        click.echo(
            f"would deploy {row['flow']} from {row['file']} "
            f"(as version {row['version']} if it changed)"
        )
        for param in row["params"]:
            click.echo(f"  param {param['name']} = {param['value']}  ({param['source']})")
        for name in row["defaults"]:
            click.echo(f"  param {name}: the flow's default")
        for ref in row["scripts"]:
            where = "bundled" if ref["bundled"] else "from the Python path"
            click.echo(f"  script {ref['module']}:{ref['function']} (line {ref['line']}, {where})")
        for name, size in row["script_files"].items():
            click.echo(f"  file {name} ({size} bytes)")
    click.echo("nothing was stored (--dry-run)")


def publish(tenant: Tenant, prep: Preparation) -> list[DeployOutcome]:
    store = open_deployments(tenant)
    try:
        return [
            store.deploy(
                item.flow,
                params=item.resolved.values,
                param_sources=item.resolved.sources,
                bundle=item.bundle,
            )
            for item in prep.flows
        ]
    finally:
        store.close()


def _await_runtime(
    tenant: Tenant, expected: dict[str, int], timeout: float, text: bool
) -> tuple[dict[str, dict[str, str | None]], bool]:
    """What a running runtime reports per flow (``runtime``: STARTED, ERROR, NOT RUNNING,
    NO REPORT), and whether all is well; prints as it learns when ``text``."""
    reports: dict[str, dict[str, str | None]] = {}
    if is_shared(tenant):
        if text:
            click.echo(
                "stored in the shared store: every running node picks it up within a "
                "second (`flowrt status` shows them)"
            )
        return {name: {"runtime": "SHARED STORE", "reason": None} for name in expected}, True
    status = read_status(tenant)
    if status is None or not status.alive():
        if text:
            click.echo("no runtime is running on this tenant; `flowrt run` starts the flows")
        return {name: {"runtime": "NOT RUNNING", "reason": None} for name in expected}, True
    if timeout <= 0:
        return reports, True
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    while pending and time.monotonic() < deadline:
        status = read_status(tenant)
        if status is None or not status.alive():
            if text:
                click.echo("the runtime stopped before reporting", err=True)
            for name in pending:
                reports[name] = {"runtime": "STOPPED", "reason": "the runtime stopped"}
            return reports, False
        for name, version in list(pending.items()):
            flow = status.flows.get(name)
            if flow is None or flow.version != version or flow.state not in (STARTED, ERROR):
                continue
            del pending[name]
            reports[name] = {"runtime": flow.state, "reason": flow.reason or None}
            if not text:
                continue
            if flow.state == STARTED:
                click.echo(f"{name}: STARTED (version {version})")
            else:
                click.echo(f"{name}: ERROR (version {version}): {flow.reason}", err=True)
        time.sleep(0.1)
    for name in pending:
        reports[name] = {"runtime": "NO REPORT", "reason": f"no report within {timeout:g}s"}
        if text:
            click.echo(f"{name}: the runtime did not report within {timeout:g}s", err=True)
    failed = any(r["runtime"] != STARTED for r in reports.values())
    return reports, not failed


@click.command()
@click.argument("name", shell_complete=complete_flow_names)
@format_option
@pass_cli
def undeploy(cli: CliContext, name: str, fmt: str) -> None:
    """Stop and remove a deployed flow (its version history stays in the tenant)."""
    store = open_deployments(cli.tenant)
    try:
        removed = store.undeploy(name)
    finally:
        store.close()
    if fmt == "json":
        print_json({"flow": name, "version": removed.version, "undeployed": True})
        return
    click.echo(f"undeployed {name} (was version {removed.version})")


COMMANDS: list[click.Command] = [deploy, undeploy]
