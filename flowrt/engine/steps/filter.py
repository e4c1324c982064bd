"""``filter CONDITION``: messages that do not match complete here, with a note."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from flowrt.dsl.model import Condition, Pos
from flowrt.dsl.spec import StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.engine.compiled import CompileContext, CompiledStep, Filtered, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_condition

__all__ = ["GRAMMAR", "KEYWORDS", "ORDER", "SPEC", "TRANSFORMS", "FilterStep", "compile"]


@dataclasses.dataclass(frozen=True)
class FilterStep:
    condition: Condition
    pos: Pos
    kind: Literal["filter"] = "filter"


GRAMMAR = "filter_step: FILTER condition _NL"
KEYWORDS = {"FILTER": "filter"}
ORDER = 30


def _filter_step(tree: TreeBuilder, items: list[Any]) -> FilterStep | None:
    return None if items[1] is None else FilterStep(items[1], tree.pos(items[0]))


TRANSFORMS: dict[str, StepTransform] = {"filter_step": _filter_step}


SPEC = StepSpec(
    name="filter",
    syntax="filter CONDITION",
    summary="Lets a message through only when CONDITION holds; any other message completes "
    "here, nothing is sent, and the MPL notes the filter.",
    example='filter header.Subject matches "(?i)invoice"',
)


def compile(step: FilterStep, ctx: CompileContext) -> CompiledStep:
    holds = compile_condition(step.condition)
    line = line_of(step.pos)
    # Built once: the note names the line and its text, so an operator sees which rule dropped it.
    dropped = Filtered(f"filtered at line {line}: {ctx.source_line(step.pos)}")

    def run(ex: Exchange, log: MessageLog) -> Filtered | None:
        return None if holds(ex) else dropped

    return CompiledStep(run, "filter", line)
