"""Pipeline steps, one module each, found here by discovery: adding a step is adding a module.

Each module carries the whole step:

- ``SPEC``: syntax, meaning and load-time check, read by the validator and the README
  reference;
- its model dataclass (frozen, with ``pos`` and a ``kind`` default that names the step);
- ``GRAMMAR``, ``KEYWORDS`` and ``TRANSFORMS``: its lark rule, the keyword terminals it needs,
  and the functions that turn its parse tree into the model (see
  :mod:`flowrt.dsl.step_syntax`); the parser joins them to the base grammar;
- ``ORDER``: where the step stands in the ``_step`` alternatives, the error texts and the
  reference;
- ``compile(step, ctx)``: the parsed step -> a :class:`~flowrt.engine.compiled.CompiledStep`,
  once, at load; optionally ``compile_group(steps, ctx)`` for a run of consecutive steps of
  its kind (route: one router) and ``check_pipeline(steps, report)`` for rules about its
  place among the other steps.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from flowrt.dsl.spec import Report, StepSpec
from flowrt.dsl.step_syntax import StepTransform
from flowrt.engine.compiled import CompileContext, CompiledStep

__all__ = [
    "COMPILERS",
    "GROUP_COMPILERS",
    "MODULES",
    "PIPELINE_CHECKS",
    "SPECS",
    "StepModule",
    "step_modules",
]


@dataclasses.dataclass(frozen=True)
class StepModule:
    """One step module as the parser and the engine see it."""

    module: ModuleType
    kind: str  # as in the model (``SetStep.kind``); "mpl-property" for the ``mpl`` step
    keyword: str  # the word a step line starts with
    rule: str  # the grammar rule ``_step`` names
    grammar: str
    keywords: dict[str, str]
    transforms: dict[str, StepTransform]


def _describe(module: ModuleType) -> StepModule:
    models = [
        value
        for value in vars(module).values()
        if dataclasses.is_dataclass(value)
        and isinstance(value, type)
        and value.__module__ == module.__name__
        and isinstance(getattr(value, "kind", None), str)
    ]
    if len(models) != 1:
        raise RuntimeError(f"{module.__name__} must define exactly one step model dataclass")
    head = re.match(r"\s*(\w+)\s*:", module.GRAMMAR)
    if head is None:
        raise RuntimeError(f"{module.__name__}.GRAMMAR does not start with a rule name")
    return StepModule(
        module=module,
        kind=str(getattr(models[0], "kind")),  # noqa: B009 - a dataclass default
        keyword=module.SPEC.name,
        rule=head.group(1),
        grammar=module.GRAMMAR,
        keywords=dict(module.KEYWORDS),
        transforms=dict(module.TRANSFORMS),
    )


def step_modules() -> tuple[StepModule, ...]:
    """Every module of this package, in ``ORDER``."""
    found = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    return tuple(_describe(module) for module in sorted(found, key=lambda mod: mod.ORDER))


MODULES: tuple[StepModule, ...] = step_modules()

#: step kind as in the model (``SetStep.kind``) -> spec
SPECS: dict[str, StepSpec] = {step.kind: step.module.SPEC for step in MODULES}

#: step kind -> its compiler
COMPILERS: dict[str, Callable[[Any, CompileContext], CompiledStep]] = {
    step.kind: step.module.compile for step in MODULES
}

#: step kind -> the compiler of a run of consecutive steps of that kind (route: one router)
GROUP_COMPILERS: dict[str, Callable[[list[Any], CompileContext], CompiledStep]] = {
    step.kind: step.module.compile_group
    for step in MODULES
    if hasattr(step.module, "compile_group")
}

#: checks of a step's place in the pipeline, ``(steps, report)``
PIPELINE_CHECKS: tuple[Callable[[Sequence[Any], Report], None], ...] = tuple(
    step.module.check_pipeline for step in MODULES if hasattr(step.module, "check_pipeline")
)
