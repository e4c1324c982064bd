"""``script "module:function"``: a Python callable that takes the exchange."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
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
    "flow's folder, then on the Python path; what it raises is recorded in the MPL chain.",
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


def _import(module: str, folder: Path) -> ModuleType:
    top, _, rest = module.partition(".")
    spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
    if spec is None or spec.origin is None:  # not in the folder (or a bare namespace dir)
        return importlib.import_module(module)
    # A private name per folder: two flows with their own transforms.py must not share one
    # module object, and the Python path's module of the same name stays untouched.
    digest = hashlib.sha1(str(folder.resolve()).encode(), usedforsecurity=False).hexdigest()[:10]
    private = f"_flowrt_script_{digest}_{top}"
    for loaded in [n for n in sys.modules if n == private or n.startswith(private + ".")]:
        del sys.modules[loaded]  # load the file as it is now (a redeploy may have changed it)
    spec = importlib.util.spec_from_file_location(
        private, spec.origin, submodule_search_locations=spec.submodule_search_locations
    )
    if spec is None or spec.loader is None:  # pragma: no cover - the finder found it above
        return importlib.import_module(module)
    loaded_module = importlib.util.module_from_spec(spec)
    sys.modules[private] = loaded_module
    try:
        spec.loader.exec_module(loaded_module)
    except BaseException:
        del sys.modules[private]
        raise
    return importlib.import_module(f"{private}.{rest}") if rest else loaded_module
