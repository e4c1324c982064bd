"""Where a flow's parameter values come from, and which one wins.

Highest first: a parameter file given at deploy (``--params FILE``), the environment
(``FLOWRT_PARAM_NAME``), the flow's parameter set in the tenant (``flowrt params set``), and
last the default written in the flow (``${param.NAME:default}``, applied by the parser).

The tenant's sets live in ``<tenant>/params/FLOW.json`` (``{"NAME": "VALUE"}``), written
atomically. Names that look like secrets are refused everywhere: secrets belong in the
credential store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flowrt._fs import atomic_write
from flowrt.dsl.model import Flow
from flowrt.dsl.params import name_problem
from flowrt.errors import FlowError, TenantError, UsageError
from flowrt.tenant import Tenant

__all__ = [
    "ENV_PREFIX",
    "ParamFile",
    "ParameterStore",
    "Resolved",
    "from_environment",
    "read_param_file",
    "resolve",
]

ENV_PREFIX = "FLOWRT_PARAM_"
_FLOW_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class ParamFile:
    """A parameter file: values for every flow, and tables of values for one flow each."""

    path: str
    common: Mapping[str, str]
    per_flow: Mapping[str, Mapping[str, str]]
    #: where each was written: "NAME", "[table]" and "table.NAME" -> (line, column)
    positions: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def values_for(self, flow: str) -> dict[str, str]:
        return {**self.common, **self.per_flow.get(flow, {})}


def _key_position(text: str, key: str, table: str | None) -> tuple[int, int]:
    """Where ``key`` is written (tomllib keeps no positions), for file:line:col messages."""
    in_table = table is None
    pattern = re.compile(r'\s*("?)' + re.escape(key) + r"\1\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_table = stripped.strip("[] ").strip('"') == table
            if table is not None and in_table and key == table:
                return number, line.index("[") + 1
            continue
        if in_table and pattern.match(line):
            return number, len(line) - len(line.lstrip()) + 1
    return 1, 1


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def read_param_file(path: str | Path) -> ParamFile:
    """Read a TOML parameter file: ``NAME = "value"`` lines, and ``[flow-name]`` tables
    for values meant for one flow only. Every problem is a FlowError naming file:line:col."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--params {shown}: no such file") from None
    except UnicodeDecodeError:
        raise FlowError(f"{shown}:1:1: the parameter file is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"--params {shown}: cannot be read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{match.group(1)}:{match.group(2)}" if match else "1:1"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "bad TOML"
        raise FlowError(
            f'{shown}:{where}: {message[0].lower()}{message[1:]}; expected NAME = "value" '
            "lines, or [flow-name] tables of them",
            hint='a parameter file is TOML, e.g. SMTP_HOST = "smtp.example.com"',
        ) from None
    problems: list[str] = []
    common: dict[str, str] = {}
    per_flow: dict[str, dict[str, str]] = {}
    positions: dict[str, tuple[int, int]] = {}

    def take(key: str, value: Any, table: str | None, into: dict[str, str]) -> None:
        line, col = _key_position(text, key, table)
        positions[key if table is None else f"{table}.{key}"] = (line, col)
        problem = name_problem(key)
        if problem is not None:
            problems.append(f"{shown}:{line}:{col}: {problem}")
            return
        scalar = _scalar(value)
        if scalar is None:
            problems.append(
                f"{shown}:{line}:{col}: {key}: expected a string, a number or true/false, "
                f"got a {type(value).__name__}"
            )
            return
        into[key] = scalar

    for key, value in data.items():
        if isinstance(value, dict):
            if not _FLOW_NAME.fullmatch(key):
                line, col = _key_position(text, key, key)
                problems.append(f"{shown}:{line}:{col}: [{key}]: not a flow name")
                continue
            positions[f"[{key}]"] = _key_position(text, key, key)
            table = per_flow.setdefault(key, {})
            for inner, inner_value in value.items():
                take(inner, inner_value, key, table)
        else:
            take(key, value, None, common)
    if problems:
        raise FlowError("\n".join(problems), hint="nothing was deployed; fix the file above")
    return ParamFile(shown, common, per_flow, positions)


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``FLOWRT_PARAM_NAME=value`` for every flow (a name that cannot be one is ignored)."""
    env = os.environ if environ is None else environ
    return {
        key[len(ENV_PREFIX) :]: value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and name_problem(key[len(ENV_PREFIX) :]) is None
    }


class ParameterStore:
    """The tenant's parameter sets, one per flow name."""

    def __init__(self, tenant: Tenant) -> None:
        self.root = tenant.root / "params"

    def _path(self, flow: str) -> Path:
        if not _FLOW_NAME.fullmatch(flow):
            raise UsageError(f"{flow!r} is not a flow name")
        return self.root / f"{flow}.json"

    def get(self, flow: str) -> dict[str, str]:
        try:
            data = json.loads(self._path(flow).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TenantError(f"the parameters of {flow} cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise TenantError(f"the parameters of {flow} are damaged (not a JSON object)")
        return {str(k): str(v) for k, v in data.items()}

    def flows(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))

    def write(self, flow: str, values: Mapping[str, str]) -> None:
        path = self._path(flow)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise TenantError(f"the tenant directory {self.root.parent} is read-only") from exc
        if values:
            data = json.dumps(dict(sorted(values.items())), indent=2) + "\n"
            atomic_write(path, data.encode(), mode=0o644)
        else:
            path.unlink(missing_ok=True)


def check_name(name: str) -> None:
    problem = name_problem(name)
    if problem is not None:
        hint = "store it with `flowrt credentials add`" if "secret" in problem else None
        raise UsageError(problem, hint=hint)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A flow's parameter values and where each came from (file, environment, tenant)."""

    values: dict[str, str]
    sources: dict[str, str]


def resolve(
    flow: Flow,
    *,
    tenant_values: Mapping[str, str],
    environment: Mapping[str, str],
    file: ParamFile | None,
) -> Resolved:
    """The values of the parameters ``flow`` uses, by precedence; a parameter found
    nowhere is left out (its default applies, or deploy reports it missing)."""
    layers: Iterable[tuple[str, Mapping[str, str]]] = (
        (f"file {file.path if file else ''}", file.values_for(flow.name) if file else {}),
        ("environment", environment),
        ("tenant", tenant_values),
    )
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in flow.param_names:
        for source, layer in layers:
            if name in layer:
                values[name], sources[name] = layer[name], source
                break
    return Resolved(values, sources)
