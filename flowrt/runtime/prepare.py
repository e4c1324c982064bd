"""What ``flowrt deploy`` checks before it stores anything, and what it would store.

For each flow file: validate it; resolve each flow's parameters (see
:mod:`flowrt.runtime.parameters`) and validate it again with their values, so a value is
checked where it is used and a parameter without one is named at its flow line; check what
the flows name in the tenant (credentials, keystore aliases, location IDs); bundle the script
modules and import each from the bundle alone. Any problem in any file: nothing is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from flowrt.dsl import Diagnostic, Flow, ParseResult, parse_file, parse_text
from flowrt.errors import FlowError
from flowrt.runtime.bundle import Bundle, check_scripts, collect
from flowrt.runtime.deployments import Deployment
from flowrt.runtime.parameters import ParameterStore, ParamFile, Resolved, resolve
from flowrt.runtime.references import check_references
from flowrt.security import TenantSecurity
from flowrt.tenant import Tenant

__all__ = ["Preparation", "Prepared", "load_with_params", "prepare", "prepare_redeploy"]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One flow ready to be stored: the flow (parsed with its values), its parameter values
    with their sources, and its script bundle."""

    flow: Flow
    resolved: Resolved
    bundle: Bundle


@dataclasses.dataclass(frozen=True)
class Preparation:
    flows: tuple[Prepared, ...]
    problems: tuple[Diagnostic, ...]  # errors (nothing may be stored) and warnings
    sources: Mapping[str, str]  # file -> text, to render the problems
    stage: str  # what failed: "" (nothing), "validate", "params", "tenant", "scripts"

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.problems)


def _unused(file: ParamFile, flows: Sequence[Flow]) -> list[Diagnostic]:
    """A value in the parameter file that no flow being deployed uses is most likely a typo
    (a warning: one file may serve several flows)."""

    def warn(key: str, message: str) -> Diagnostic:
        line, column = file.positions.get(key, (1, 1))
        return Diagnostic(file.path, line, column, "warning", "unused-parameter", message)

    used = {name for flow in flows for name in flow.param_names}
    by_name = {flow.name: flow for flow in flows}
    out = [
        warn(key, f"{key} is used by no flow deployed") for key in file.common if key not in used
    ]
    for table, values in file.per_flow.items():
        flow = by_name.get(table)
        if flow is None:
            out.append(warn(f"[{table}]", f"[{table}] names no flow deployed"))
            continue
        out += [
            warn(f"{table}.{key}", f"{key}: flow {table} does not use it")
            for key in values
            if key not in flow.param_names
        ]
    return out


def prepare(
    files: Sequence[str],
    tenant: Tenant,
    *,
    param_file: ParamFile | None = None,
    environment: Mapping[str, str] | None = None,
    security: TenantSecurity | None = None,
) -> Preparation:
    results = [parse_file(path) for path in files]
    sources = {r.file: r.source for r in results}
    if param_file is not None:
        sources[param_file.path] = _read_text(param_file.path)
    problems = [d for r in results for d in r.diagnostics]
    if any(not r.ok for r in results):
        return Preparation((), tuple(problems), sources, "validate")
    store = ParameterStore(tenant)
    environment = environment or {}
    resolved: dict[str, Resolved] = {}
    strict: list[ParseResult] = []
    for result in results:
        for flow in result.flows:
            resolved[flow.name] = resolve(
                flow,
                tenant_values=store.get(flow.name),
                environment=environment,
                file=param_file,
            )
        values = {flow.name: resolved[flow.name].values for flow in result.flows}
        strict.append(parse_text(result.source, result.file, values))
    # the first round's warnings are those of values without their parameters: replaced
    problems = [d for r in strict for d in r.diagnostics]
    flows = [flow for r in strict for flow in r.flows]
    if param_file is not None:
        problems += _unused(param_file, flows)
    if any(not r.ok for r in strict):
        return Preparation((), tuple(problems), sources, "params")
    security = security or TenantSecurity.open(tenant)
    missing = [p for flow in flows for p in check_references(flow, security)]
    if missing:
        return Preparation((), tuple(problems + missing), sources, "tenant")
    prepared = []
    script_problems: list[Diagnostic] = []
    for flow in flows:
        bundle = collect(flow, Path(flow.file).resolve().parent)
        script_problems += check_scripts(flow, bundle)
        prepared.append(Prepared(flow, resolved[flow.name], bundle))
    if script_problems:
        return Preparation((), tuple(problems + script_problems), sources, "scripts")
    return Preparation(tuple(prepared), tuple(problems), sources, "")


def prepare_redeploy(
    tenant: Tenant,
    deployment: Deployment,
    values: Mapping[str, str],
    sources: Mapping[str, str],
    bundle: Bundle,
    *,
    security: TenantSecurity | None = None,
) -> Preparation:
    """A deployed version again, with other parameter values: its own text and scripts
    (never the files it came from), checked like a deploy."""
    text = {deployment.file: deployment.source}
    result = parse_text(deployment.source, deployment.file, {deployment.name: dict(values)})
    problems = list(result.diagnostics)
    flow = next((f for f in result.flows if f.name == deployment.name), None)
    if not result.ok or flow is None:
        return Preparation((), tuple(problems), text, "params")
    security = security or TenantSecurity.open(tenant)
    missing = check_references(flow, security)
    if missing:
        return Preparation((), tuple(problems + missing), text, "tenant")
    scripts = check_scripts(flow, bundle)
    if scripts:
        return Preparation((), tuple(problems + scripts), text, "scripts")
    resolved = Resolved(dict(values), {n: sources[n] for n in values})
    return Preparation((Prepared(flow, resolved, bundle),), tuple(problems), text, "")


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def load_with_params(
    path: str,
    tenant: Tenant,
    *,
    param_file: ParamFile | None = None,
    environment: Mapping[str, str] | None = None,
) -> Flow:
    """The one flow in ``path`` with its parameters resolved as a deploy would (the tenant's
    set only when there is a tenant); a FlowError naming every problem, a parameter
    without a value included."""
    first = parse_file(path)
    if not first.ok:
        raise FlowError(f"{path} is not a valid flow:\n{first.render()}")
    if len(first.flows) != 1:
        raise FlowError(f"{path} holds {len(first.flows)} flows; expected exactly one")
    flow = first.flows[0]
    stored = ParameterStore(tenant).get(flow.name) if tenant.exists() else {}
    resolved = resolve(flow, tenant_values=stored, environment=environment or {}, file=param_file)
    result = parse_text(first.source, first.file, {flow.name: resolved.values})
    if not result.ok:
        raise FlowError(
            f"{path} is not a valid flow with its parameters:\n{result.render()}",
            diagnostics=result.diagnostics,
        )
    return result.flows[0]
