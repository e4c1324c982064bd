"""``mpl property NAME = VALUE``: a custom header property, searchable in the MPL."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from flowrt.dsl.model import Operand, Pos
from flowrt.dsl.spec import StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_operand

__all__ = ["GRAMMAR", "KEYWORDS", "ORDER", "SPEC", "TRANSFORMS", "MplPropertyStep", "compile"]


@dataclasses.dataclass(frozen=True)
class MplPropertyStep:
    name: str
    value: Operand
    pos: Pos
    kind: Literal["mpl-property"] = "mpl-property"


GRAMMAR = "mpl_step: MPL PROPERTY field EQ operand _NL"
KEYWORDS = {"MPL": "mpl"}
ORDER = 80


def _mpl_step(tree: TreeBuilder, items: list[Any]) -> MplPropertyStep | None:
    name, value = items[2], items[4]
    if name is None or value is None:
        return None
    return MplPropertyStep(name[0], value, tree.pos(items[0]))


TRANSFORMS: dict[str, StepTransform] = {"mpl_step": _mpl_step}


SPEC = StepSpec(
    name="mpl",
    syntax='mpl property "NAME" = VALUE',
    summary="Records a custom header property on the message's MPL; find it later with "
    "`flowrt mpl list --property NAME=VALUE`.",
    example='mpl property "customer" = header.From',
)


def compile(step: MplPropertyStep, ctx: CompileContext) -> CompiledStep:
    name = step.name
    value = compile_operand(step.value)

    def run(ex: Exchange, log: MessageLog) -> None:
        log.custom_property(name, value(ex))

    return CompiledStep(run, f"mpl property {name}", line_of(step.pos))
