"""``script "module:function"``: a Python callable that takes the exchange."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from flowrt.dsl.model import Pos
from flowrt.dsl.spec import StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.dsl.template import SpecError, unescape
from flowrt.dsl.values import did_you_mean
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.errors import FlowError

__all__ = [
    "GRAMMAR",
    "KEYWORDS",
    "ORDER",
    "SPEC",
    "TRANSFORMS",
    "ScriptStep",
    "compile",
    "load_function",
    "local_names",
]


@dataclasses.dataclass(frozen=True)
class ScriptStep:
    module: str
    function: str
    pos: Pos
    kind: Literal["script"] = "script"


GRAMMAR = "script_step: SCRIPT STRING _NL"
KEYWORDS = {"SCRIPT": "script"}
ORDER = 60


def _script(tree: TreeBuilder, items: list[Any]) -> ScriptStep:
    ref = items[1]
    text = unescape(str(ref)[1:-1])
    match = re.fullmatch(r"([A-Za-z_][\w.]*):([A-Za-z_]\w*)", text)
    if not match:
        raise SpecError(
            f'script: expected "module:function" (e.g. "transforms:enrich"), got {ref}',
            tree.pos(ref),
        )
    return ScriptStep(match.group(1), match.group(2), tree.pos(items[0]))


def _script_step(tree: TreeBuilder, items: list[Any]) -> ScriptStep | None:
    return tree.guard(_script, tree, items)


TRANSFORMS: dict[str, StepTransform] = {"script_step": _script_step}


SPEC = StepSpec(
    name="script",
    syntax='script "module:function"',
    summary="Calls a Python function with the exchange. The module is looked up in the "
    "flow's folder (a deployed flow: in its version's copy), then on the Python path; what "
    "it raises is recorded in the MPL chain.",
    example='script "transforms:enrich"',
)


def compile(step: ScriptStep, ctx: CompileContext) -> CompiledStep:
    name = f"{step.module}:{step.function}"
    function = load_function(step, ctx.folder)

    def run(ex: Exchange, log: MessageLog) -> None:
        before = ex.headers.items()
        try:
            function(ex)
        except SystemExit as exc:
            # A script must not end the runtime; its exit is an error like any other.
            raise RuntimeError(f"the script called sys.exit({exc.code!r})") from None
        # Headers a script sets are the flow's, like those of `set header`: receivers write
        # them into the mail. The diff is needed because scripts change headers directly.
        after = ex.headers.items()
        if after != before:
            kept = {(name.lower(), value) for name, value in before}
            ex.flow_headers.update(n.lower() for n, v in after if (n.lower(), v) not in kept)

    return CompiledStep(run, f"script {name}", line_of(step.pos))


def load_function(step: ScriptStep, folder: Path) -> Callable[[Exchange], Any]:
    """Import ``module`` (the flow's folder first, then the Python path) and return its
    ``function``. Done at load time: a missing module or function is a FlowError naming
    the flow line, never a surprise at the first message."""
    where = f"{step.pos.file}:{step.pos.line}"
    shown = f'script "{step.module}:{step.function}"'
    try:
        module = _import(step.module, folder)
    except ModuleNotFoundError as exc:
        if exc.name and step.module.split(".")[0] != exc.name.split(".")[0]:
            raise FlowError(
                f"{where}: {shown}: the module imports {exc.name!r}, which is not installed"
            ) from exc
        raise FlowError(
            f"{where}: {shown}: no module {step.module!r} in {folder} or on the Python path",
            hint=f"put {step.module.replace('.', '/')}.py beside the flow file",
        ) from None
    except Exception as exc:
        raise FlowError(
            f"{where}: {shown}: importing {step.module!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    function = getattr(module, step.function, None)
    if function is None:
        own = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isfunction(value) and value.__module__ == module.__name__
        )
        known = f"; it has {', '.join(own)}" if own else ""
        raise FlowError(
            f"{where}: {shown}: {step.module!r} has no {step.function!r}"
            + (did_you_mean(step.function, own) or known)
        )
    if not callable(function):
        raise FlowError(f"{where}: {shown}: {step.function!r} is not a function")
    if inspect.iscoroutinefunction(function):
        raise FlowError(
            f"{where}: {shown}: {step.function!r} is async; a script is a plain function "
            "that changes the exchange"
        )
    return function  # type: ignore[no-any-return]


_IMPORT_LOCK = threading.Lock()


def local_names(folder: Path) -> set[str]:
    """The top-level modules a folder holds: ``name.py`` files and ``name/`` packages."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return set()
    names = {p.stem for p in entries if p.suffix == ".py" and p.is_file()}
    names |= {p.name for p in entries if (p / "__init__.py").is_file()}
    return names


def _import(module: str, folder: Path) -> ModuleType:
    top = module.partition(".")[0]
    local = local_names(folder)
    if top not in local:
        return importlib.import_module(module)
    # The folder's modules are imported with the folder first on the path, so that they
    # import each other by their plain names, and are taken out of sys.modules afterwards:
    # two flows (or two versions of one) with their own transforms.py never share a module,
    # and the next load reads the files as they are then. The lock: sys.path is global.
    with _IMPORT_LOCK:
        saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in local}
        entry = str(folder)
        sys.path.insert(0, entry)
        bytecode = sys.dont_write_bytecode
        sys.dont_write_bytecode = True  # no __pycache__ in the flow folder or the tenant
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module)
        finally:
            sys.dont_write_bytecode = bytecode
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)
            for name in [n for n in sys.modules if n.split(".")[0] in local]:
                del sys.modules[name]
            sys.modules.update(saved)
