"""A flow compiled once, at load: its steps as plain functions, and what the MPL needs.

Nothing here runs per message; :mod:`flowrt.engine.runner` does.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import structlog

from flowrt.dsl import model as m
from flowrt.engine.compiled import CompileContext, CompiledStep, line_of
from flowrt.engine.steps import COMPILERS, GROUP_COMPILERS
from flowrt.mpl.model import LogLevel

__all__ = ["Pipeline", "compile_flow"]

LOGGER_NAME = "flowrt.flow"


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A compiled flow.

    ``receivers`` are the receiver names in flow order: where a message goes when the flow has
    no route steps (but the dead-letter receiver). ``delivery_steps`` maps a receiver name to
    the (step ID, model step ID) its delivery is recorded under: ``receiver NAME`` and the
    line of its block.
    """

    flow: m.Flow
    steps: tuple[CompiledStep, ...]
    receivers: tuple[str, ...]
    delivery_steps: dict[str, tuple[str, str]]
    sender: str
    receiver_descriptions: tuple[str, ...]
    level: LogLevel

    @property
    def name(self) -> str:
        return self.flow.name


def compile_flow(flow: m.Flow, *, folder: Path | None = None, logger: Any = None) -> Pipeline:
    """Compile every step of ``flow``. ``folder`` is where ``script`` modules are looked up
    first (default: the flow file's folder); ``logger`` is the structlog logger ``log`` steps
    write to (default ``structlog.get_logger("flowrt.flow")``), bound with the flow name.
    Binding happens here, once, so configure structlog before compiling: a ``log`` step asks
    the bound logger at compile time whether its level is enabled.

    Raises FlowError for what only shows at load (a script module that does not import).
    """
    base = structlog.get_logger(LOGGER_NAME) if logger is None else logger
    ctx = CompileContext(
        flow=flow,
        folder=Path(flow.file).resolve().parent if folder is None else folder,
        logger=base.bind(flow=flow.name),
    )
    steps: list[CompiledStep] = []
    for kind, group in itertools.groupby(flow.steps, key=lambda s: s.kind):
        if kind in GROUP_COMPILERS:  # consecutive steps of this kind compile as one
            steps.append(GROUP_COMPILERS[kind](list(group), ctx))
        else:
            steps.extend(COMPILERS[kind](step, ctx) for step in group)
    return Pipeline(
        flow=flow,
        steps=tuple(steps),
        receivers=tuple(r.name for r in flow.receivers if r.name != _dead_letter_receiver(flow)),
        delivery_steps={r.name: (f"receiver {r.name}", line_of(r.pos)) for r in flow.receivers},
        sender="" if flow.sender is None else flow.sender.describe(),
        receiver_descriptions=tuple(r.describe() for r in flow.receivers),
        level=LogLevel(flow.log_level.value),
    )


def _dead_letter_receiver(flow: m.Flow) -> str:
    """The receiver ``on-error`` names as dead-letter place gets only dead letters (and
    what a route sends it), not every message."""
    policy = flow.on_error
    if policy is not None and policy.dead_letter.kind == "receiver":
        return policy.dead_letter.target
    return ""
