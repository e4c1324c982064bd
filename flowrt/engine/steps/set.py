"""``set header|property "NAME" = VALUE`` and ``set body = VALUE``."""

from __future__ import annotations

from flowrt.dsl.model import SetStep
from flowrt.dsl.spec import StepSpec
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_operand

SPEC = StepSpec(
    name="set",
    syntax='set header "NAME" = VALUE | set property "NAME" = VALUE | set body = VALUE',
    summary="Sets a header, a property or the body. VALUE is a quoted string with ${...} "
    "expressions, or a reference such as header.From.",
    example='set header "X-Forwarded-By" = "flowrt"',
)


def compile(step: SetStep, ctx: CompileContext) -> CompiledStep:
    value = compile_operand(step.value)
    name = step.target.name
    kind = step.target.kind

    if kind == "header":

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.headers.set(name, value(ex))

    elif kind == "property":

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.properties[name] = value(ex)

    else:

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.set_text(value(ex))

    return CompiledStep(run, f"set {kind} {name}".rstrip(), line_of(step.pos))
