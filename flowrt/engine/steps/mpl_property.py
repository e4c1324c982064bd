"""``mpl property NAME = VALUE``: a custom header property, searchable in the MPL."""

from __future__ import annotations

from flowrt.dsl.model import MplPropertyStep
from flowrt.dsl.spec import StepSpec
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_operand

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
