"""``set header|property "NAME" = VALUE`` and ``set body = VALUE``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from flowrt.dsl.model import Operand, Pos, Target
from flowrt.dsl.spec import Report, StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_operand

__all__ = [
    "GRAMMAR",
    "KEYWORDS",
    "ORDER",
    "RECEIVER_HEADERS",
    "SPEC",
    "TRANSFORMS",
    "SetStep",
    "check",
    "compile",
]


@dataclasses.dataclass(frozen=True)
class SetStep:
    target: Target
    value: Operand
    pos: Pos
    kind: Literal["set"] = "set"


GRAMMAR = "set_step: SET target EQ operand _NL"
KEYWORDS = {"SET": "set"}
ORDER = 10


def _set_step(tree: TreeBuilder, items: list[Any]) -> SetStep | None:
    target, value = items[1], items[3]
    if target is None or value is None:
        return None
    return SetStep(target, value, tree.pos(items[0]))


TRANSFORMS: dict[str, StepTransform] = {"set_step": _set_step}


# Headers a receiver writes from its own settings; setting them on the message does not
# change the mail, which the validator says.
RECEIVER_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "x-flowrt-message-id",
    }
)


def check(step: SetStep, receivers: Mapping[str, Any], report: Report) -> None:
    if step.target.kind == "header" and step.target.name.lower() in RECEIVER_HEADERS:
        report.warning(
            step.pos,
            "receiver-header",
            f"set header {step.target.name!r} changes the message, not the sent mail: a "
            "receiver writes that header from its own settings (from, to, subject...)",
        )


SPEC = StepSpec(
    name="set",
    syntax='set header "NAME" = VALUE | set property "NAME" = VALUE | set body = VALUE',
    summary="Sets a header, a property or the body (the text; the mail's HTML alternative "
    "is then left out). VALUE is a quoted string with ${...} "
    "expressions, or a reference such as header.From. Headers set here are written into "
    "the mail that receivers send.",
    example='set header "X-Forwarded-By" = "flowrt"',
    check=check,
)


def compile(step: SetStep, ctx: CompileContext) -> CompiledStep:
    value = compile_operand(step.value)
    name = step.target.name
    kind = step.target.kind
    key = name.lower()

    if kind == "header":

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.headers.set(name, value(ex))
            ex.flow_headers.add(key)

    elif kind == "property":

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.properties[name] = value(ex)

    else:

        def run(ex: Exchange, log: MessageLog) -> None:
            ex.set_text(value(ex))
            ex.html = None  # the flow's text replaces the mail's content; its HTML said the old

    return CompiledStep(run, f"set {kind} {name}".rstrip(), line_of(step.pos))
