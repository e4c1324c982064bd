"""``filter CONDITION``: messages that do not match complete here, with a note."""

from __future__ import annotations

from flowrt.dsl.model import FilterStep
from flowrt.dsl.spec import StepSpec
from flowrt.engine.compiled import CompileContext, CompiledStep, Filtered, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_condition

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
