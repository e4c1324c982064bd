"""The script modules a flow takes into its deployment.

For each ``script "module:function"`` step, the module found in the flow's folder is bundled,
and with it every module of that folder it imports (``import helpers``, ``from rates import
x``), found by reading the imports of each bundled file, transitively; a package is bundled
whole. A module not in the folder comes from the Python path (an installed package) and is
not bundled. Imports made at run time by name (``importlib.import_module("x")``) are not
seen: deploy imports the scripts from the bundle alone, so such a module fails the deploy
instead of the first message.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flowrt._fs import atomic_write
from flowrt.dsl.diagnostics import Diagnostic
from flowrt.dsl.model import Flow
from flowrt.engine.steps.script import ScriptStep, load_function, local_names
from flowrt.errors import FlowError

__all__ = ["Bundle", "ScriptRef", "check_scripts", "collect", "write_bundle"]


@dataclasses.dataclass(frozen=True)
class ScriptRef:
    module: str
    function: str
    line: int
    bundled: bool  # False: imported from the Python path at run time


@dataclasses.dataclass(frozen=True)
class Bundle:
    """Files (path relative to the flow's folder -> content) and the scripts using them."""

    files: dict[str, bytes]
    scripts: tuple[ScriptRef, ...]

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name] + b"\0")
        return h.hexdigest()


def _script_steps(flow: Flow) -> Iterator[ScriptStep]:
    for step in flow.steps:
        if isinstance(step, ScriptStep):
            yield step


def _module_files(top: str, folder: Path) -> list[Path]:
    single = folder / f"{top}.py"
    if single.is_file():
        return [single]
    package = folder / top
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_tops(path: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return set()  # the import check reports the file's own problem, with its line
    tops: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def collect(flow: Flow, folder: Path | None = None) -> Bundle:
    """What ``flow``'s scripts need from its folder (default: the flow file's folder)."""
    folder = Path(flow.file).resolve().parent if folder is None else folder
    local = local_names(folder)
    files: dict[str, bytes] = {}
    scripts: list[ScriptRef] = []
    pending: list[str] = []
    for step in _script_steps(flow):
        top = step.module.split(".")[0]
        scripts.append(ScriptRef(step.module, step.function, step.pos.line, top in local))
        pending.append(top)
    done: set[str] = set()
    while pending:
        top = pending.pop()
        if top in done or top not in local:
            continue
        done.add(top)
        for path in _module_files(top, folder):
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
            pending.extend(_imported_tops(path) - done)
    return Bundle(files, tuple(scripts))


def write_bundle(bundle: Bundle, target: Path) -> None:
    for name, data in bundle.files.items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, mode=0o644)


def check_scripts(flow: Flow, bundle: Bundle) -> list[Diagnostic]:
    """Import every script from the bundle alone (as the runtime will) and find its
    function; one diagnostic, at the flow line, per script that fails."""
    problems: list[Diagnostic] = []
    steps = list(_script_steps(flow))
    if not steps:
        return problems
    with tempfile.TemporaryDirectory(prefix="flowrt-bundle-") as staging:
        write_bundle(bundle, Path(staging))
        for step in steps:
            try:
                load_function(step, Path(staging))
            except FlowError as exc:
                message = exc.message.split(": ", 1)[1] if ": " in exc.message else exc.message
                message = message.replace(staging, "the flow's folder")
                problems.append(Diagnostic.at(step.pos, "script", message))
    return problems
