"""``route when CONDITION to RECEIVER`` and ``route otherwise to RECEIVER``."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from flowrt.dsl.model import Condition, Pos
from flowrt.dsl.spec import Report, StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.dsl.values import did_you_mean
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, Routed, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import Predicate, compile_condition

__all__ = [
    "GRAMMAR",
    "KEYWORDS",
    "ORDER",
    "SPEC",
    "TRANSFORMS",
    "RouteStep",
    "check",
    "check_pipeline",
    "compile",
    "compile_group",
    "compile_router",
]


@dataclasses.dataclass(frozen=True)
class RouteStep:
    """``route when COND to R``; ``condition`` is None for ``route otherwise to R``."""

    condition: Condition | None
    receiver: str
    receiver_pos: Pos
    pos: Pos
    kind: Literal["route"] = "route"


GRAMMAR = """route_step: ROUTE WHEN condition TO NAME _NL
          | ROUTE OTHERWISE TO NAME _NL          -> route_otherwise"""
KEYWORDS = {"ROUTE": "route", "WHEN": "when", "OTHERWISE": "otherwise", "TO": "to"}
ORDER = 40


def _route_step(tree: TreeBuilder, items: list[Any]) -> RouteStep | None:
    condition, receiver = items[2], items[4]
    if condition is None:
        return None
    return RouteStep(condition, str(receiver), tree.pos(receiver), tree.pos(items[0]))


def _route_otherwise(tree: TreeBuilder, items: list[Any]) -> RouteStep:
    receiver = items[3]
    return RouteStep(None, str(receiver), tree.pos(receiver), tree.pos(items[0]))


TRANSFORMS: dict[str, StepTransform] = {
    "route_step": _route_step,
    "route_otherwise": _route_otherwise,
}


def check(step: RouteStep, receivers: Mapping[str, Any], report: Report) -> None:
    if step.receiver not in receivers:
        names = sorted(receivers)
        known = f"; the receivers are {', '.join(names)}" if names else "; the flow has none"
        report.error(
            step.receiver_pos,
            "unknown-receiver",
            f"route to {step.receiver!r}: no receiver of that name{known}"
            + did_you_mean(step.receiver, names),
        )


SPEC = StepSpec(
    name="route",
    syntax="route when CONDITION to RECEIVER | route otherwise to RECEIVER",
    summary="Sends the message to the named receiver. Consecutive route steps form one "
    "router: the first that matches wins, otherwise is the default. A flow without route "
    "steps sends to every receiver.",
    example='route when header.Subject contains "urgent" to oncall',
    check=check,
)


def compile(step: RouteStep, ctx: CompileContext) -> CompiledStep:
    return compile_router((step,), ctx)


def check_pipeline(steps: Sequence[Any], report: Report) -> None:
    """Consecutive route steps are one router; its ``otherwise`` comes last."""
    routes = [i for i, s in enumerate(steps) if isinstance(s, RouteStep)]
    if routes and routes != list(range(routes[0], routes[0] + len(routes))):
        first_gap = next(i for a, i in itertools.pairwise(routes) if i != a + 1)
        report.error(
            steps[first_gap].pos,
            "route-order",
            "route steps must follow each other: they form one router",
        )
    for index in routes[:-1]:
        step = steps[index]
        if isinstance(step, RouteStep) and step.condition is None:
            report.error(
                step.pos,
                "route-order",
                "route otherwise must be the last route step; later routes never match",
            )


def compile_group(routes: Sequence[RouteStep], ctx: CompileContext) -> CompiledStep:
    """Consecutive route steps compile as one router."""
    return compile_router(routes, ctx)


def compile_router(routes: Sequence[RouteStep], ctx: CompileContext) -> CompiledStep:
    """Consecutive route steps as one step: the first that matches decides.

    Why one step and not one per route: "first match wins" then needs no state between steps,
    and the MPL shows one router step whose model step ID is the line of the route that won.
    """
    choices: list[tuple[Predicate | None, Routed]] = [
        (
            None if r.condition is None else compile_condition(r.condition),
            Routed((r.receiver,), line_of(r.pos), f"to {r.receiver} (line {r.pos.line})"),
        )
        for r in routes
    ]
    first = line_of(routes[0].pos)
    no_match = Routed((), first, f"no route matched (line {first})")

    def run(ex: Exchange, log: MessageLog) -> Routed:
        for holds, routed in choices:
            if holds is None or holds(ex):
                return routed
        return no_match

    return CompiledStep(run, "route", first)
