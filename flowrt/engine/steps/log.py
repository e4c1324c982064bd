"""``log LEVEL "TEXT"``: a line in the MPL and the runtime log."""

from __future__ import annotations

import logging
from typing import Any

from flowrt.dsl.model import LogStep
from flowrt.dsl.spec import StepSpec
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_template
from flowrt.mpl.model import LogLevel

SPEC = StepSpec(
    name="log",
    syntax='log error|warn|info|debug "TEXT"',
    summary="Writes TEXT (with ${...} expressions) to the message's MPL and the runtime log. "
    "debug lines are kept only when the flow's log-level is debug or trace.",
    example='log info "forwarding ${header.Subject}"',
)

# structlog method and stdlib number of each DSL level
_METHODS = {"error": "error", "warn": "warning", "info": "info", "debug": "debug"}
_NUMBERS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO}


def compile(step: LogStep, ctx: CompileContext) -> CompiledStep:
    text = compile_template(step.text)
    level = step.level.value
    emit = getattr(ctx.logger, _METHODS[level])
    number = _NUMBERS.get(level, logging.DEBUG)
    # The MPL level a line needs (as the recorder decides it): debug from debug, others at info.
    needs = LogLevel.DEBUG.rank if level == "debug" else LogLevel.INFO.rank
    logged = _enabled(ctx.logger, number)

    def run(ex: Exchange, log: MessageLog) -> None:
        # Render only when someone will read it: a debug line at MPL level info is free.
        if not logged and log.level.rank < needs:
            return
        line = text(ex)
        log.log(level, line)
        emit(line, message_id=ex.message_id)

    return CompiledStep(run, f"log {level}", line_of(step.pos))


def _enabled(logger: Any, number: int) -> bool:
    """Whether the runtime log writes this level; unknown logger kinds are asked every time."""
    for name in ("is_enabled_for", "isEnabledFor"):
        check = getattr(logger, name, None)
        if callable(check):
            return bool(check(number))
    return True
