"""Pipeline steps, one module each, registered by name.

Each module has a ``SPEC`` (syntax, meaning, load-time check) that the validator and the
README reference read, and a ``compile(step, ctx)`` that turns the parsed step into a
:class:`~flowrt.engine.compiled.CompiledStep` once, at load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowrt.dsl.spec import StepSpec
from flowrt.engine.compiled import CompileContext, CompiledStep
from flowrt.engine.steps import (
    attachments,
    filter,
    log,
    mpl_property,
    remove,
    route,
    script,
    set,
    split,
)

_MODULES = (set, remove, filter, route, split, script, log, mpl_property, attachments)


def _kind(module: Any) -> str:
    return "mpl-property" if module is mpl_property else str(module.SPEC.name)


#: step kind as in the model (``SetStep.kind``) -> spec
SPECS: dict[str, StepSpec] = {_kind(module): module.SPEC for module in _MODULES}

#: step kind -> its compiler
COMPILERS: dict[str, Callable[[Any, CompileContext], CompiledStep]] = {
    _kind(module): module.compile for module in _MODULES
}
