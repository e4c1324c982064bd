"""``flowrt params set|unset|list``: the tenant's parameter values, one set per flow.

Changing a value of a deployed flow redeploys it at once (a new version with its own text
and scripts, the new value checked where the flow uses it); the runtime picks it up like
any deploy.
"""

from __future__ import annotations

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.cli.deploy import _REFUSED, _await_runtime, _seconds, publish
from flowrt.dsl.diagnostics import render_all
from flowrt.errors import FlowError, NotFoundError, UsageError
from flowrt.runtime.parameters import ParameterStore, check_name
from flowrt.runtime.prepare import prepare_redeploy
from flowrt.store import open_deployments
from flowrt.tenant import Tenant

_WAIT = click.option(
    "--wait",
    "wait_for",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="How long to wait for a running runtime to report a redeploy (0s: don't).",
)


@click.group()
def params() -> None:
    """Parameter values of flows, kept in the tenant (secrets go to `flowrt credentials`)."""


def _redeploy(tenant: Tenant, flow: str, change: dict[str, str | None], timeout: float) -> bool:
    """Redeploy ``flow`` with ``change`` applied to its values (None: the value goes);
    False when it is not deployed. Raises FlowError, storing nothing, when it cannot be."""
    store = open_deployments(tenant)
    current = store.get(flow)
    if current is None:
        return False
    values = dict(current.params)
    sources = dict(current.param_sources)
    for name, value in change.items():
        if value is None:
            values.pop(name, None)
            sources.pop(name, None)
        else:
            values[name], sources[name] = value, "tenant"
    prep = prepare_redeploy(tenant, current, values, sources, store.bundle(current))
    if prep.problems:
        click.echo(render_all(prep.problems, dict(prep.sources)), err=True)
    if not prep.ok:
        raise FlowError(
            _REFUSED[prep.stage].replace("nothing was deployed", "nothing was changed"),
            hint=f"the deployed version {current.version} of {flow} stays as it is",
        )
    outcomes = publish(tenant, prep)
    for outcome in outcomes:
        if outcome.changed:
            click.echo(f"deployed {outcome.name} version {outcome.version}")
        else:
            click.echo(f"{outcome.name} is unchanged (version {outcome.version})")
    _, ok = _await_runtime(tenant, {o.name: o.version for o in outcomes}, timeout, True)
    if not ok:
        raise SystemExit(1)
    return True


def _check_used(tenant: Tenant, flow: str, name: str) -> None:
    current = open_deployments(tenant).get(flow)
    if current is None:
        return
    used = current.load().param_names
    if name not in used:
        listed = ", ".join(used) if used else "none"
        raise UsageError(
            f"the deployed flow {flow} uses no parameter {name} (it uses: {listed})",
            hint="check the spelling; a flow uses a parameter as ${param.NAME}",
        )


@params.command("set")
@click.argument("flow")
@click.argument("name")
@click.argument("value")
@_WAIT
@pass_cli
def set_param(cli: CliContext, flow: str, name: str, value: str, wait_for: str) -> None:
    """Set parameter NAME of FLOW; a deployed FLOW is redeployed with it."""
    timeout = _seconds(wait_for)
    check_name(name)
    tenant = cli.tenant
    store = ParameterStore(tenant)
    values = store.get(flow)
    _check_used(tenant, flow, name)
    if values.get(name) == value and open_deployments(tenant).get(flow) is not None:
        click.echo(f"{flow}: {name} is already {value}")
        return
    redeployed = _redeploy(tenant, flow, {name: value}, timeout)
    store.write(flow, {**values, name: value})
    if not redeployed:
        click.echo(f"{flow}: {name} = {value} (used when {flow} is deployed)")


@params.command("unset")
@click.argument("flow")
@click.argument("name")
@_WAIT
@pass_cli
def unset_param(cli: CliContext, flow: str, name: str, wait_for: str) -> None:
    """Remove parameter NAME of FLOW; a deployed FLOW is redeployed without it."""
    timeout = _seconds(wait_for)
    tenant = cli.tenant
    store = ParameterStore(tenant)
    values = store.get(flow)
    if name not in values:
        known = ", ".join(sorted(values)) or "none"
        raise NotFoundError(f"{flow} has no parameter {name} in the tenant (it has: {known})")
    current = open_deployments(tenant).get(flow)
    change: dict[str, str | None] = {}
    if current is not None and current.param_sources.get(name) == "tenant":
        change[name] = None
    redeployed = _redeploy(tenant, flow, change, timeout) if change else False
    store.write(flow, {k: v for k, v in values.items() if k != name})
    if not redeployed:
        click.echo(f"{flow}: {name} removed")


@params.command("list")
@click.argument("flow", required=False)
@format_option
@pass_cli
def list_params(cli: CliContext, flow: str | None, fmt: str) -> None:
    """Parameter values in the tenant, and those the deployed versions run with."""
    tenant = cli.tenant
    store = ParameterStore(tenant)
    deployments = open_deployments(tenant)
    flows = sorted(set(store.flows()) | set(deployments.names()))
    if flow is not None:
        flows = [flow]
    rows = []
    for name in flows:
        stored = store.get(name)
        current = deployments.get(name)
        deployed = current.params if current else {}
        sources = current.param_sources if current else {}
        for param in sorted(set(stored) | set(deployed)):
            rows.append(
                {
                    "flow": name,
                    "name": param,
                    "tenant": stored.get(param),
                    "deployed": deployed.get(param),
                    "source": sources.get(param),
                    "version": current.version if current else None,
                }
            )
    if fmt == "json":
        print_json(rows)
    else:
        print_table(rows, ["flow", "name", "tenant", "deployed", "source", "version"])


COMMANDS: list[click.Command] = [params]
