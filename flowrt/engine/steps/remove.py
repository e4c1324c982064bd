"""``remove header|property "NAME"`` and ``remove body``."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from flowrt.dsl.model import Pos, Target
from flowrt.dsl.spec import StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange

__all__ = ["GRAMMAR", "KEYWORDS", "ORDER", "SPEC", "TRANSFORMS", "RemoveStep", "compile"]


@dataclasses.dataclass(frozen=True)
class RemoveStep:
    target: Target
    pos: Pos
    kind: Literal["remove"] = "remove"


GRAMMAR = "remove_step: REMOVE target _NL"
KEYWORDS = {"REMOVE": "remove"}
ORDER = 20


def _remove_step(tree: TreeBuilder, items: list[Any]) -> RemoveStep | None:
    return None if items[1] is None else RemoveStep(items[1], tree.pos(items[0]))


TRANSFORMS: dict[str, StepTransform] = {"remove_step": _remove_step}


SPEC = StepSpec(
    name="remove",
    syntax='remove header "NAME" | remove property "NAME" | remove body',
    summary="Removes a header (every occurrence), a property, or empties the body.",
    example='remove header "Received"',
)


def compile(step: RemoveStep, ctx: CompileContext) -> CompiledStep:
    name = step.target.name
    kind = step.target.kind
    key = name.lower()

    if kind == "header":

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.headers.remove(name)
            ex.flow_headers.discard(key)

    elif kind == "property":

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.properties.pop(name, None)

    else:

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.body = b""

    return CompiledStep(run, f"remove {kind} {name}".rstrip(), line_of(step.pos))
