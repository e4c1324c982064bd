"""``route when CONDITION to RECEIVER`` and ``route otherwise to RECEIVER``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowrt.dsl.model import RouteStep
from flowrt.dsl.spec import Report, StepSpec
from flowrt.dsl.values import did_you_mean


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
