"""``log LEVEL "TEXT"``: a line in the MPL and the runtime log."""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import Any, Literal

from flowrt.dsl.model import Pos, Template
from flowrt.dsl.spec import StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.dsl.template import SpecError, parse_template
from flowrt.dsl.values import did_you_mean
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import compile_template
from flowrt.mpl.model import LogLevel

__all__ = ["GRAMMAR", "KEYWORDS", "ORDER", "SPEC", "TRANSFORMS", "Level", "LogStep", "compile"]


class Level(enum.Enum):
    ERROR = "error"
    WARN = "warn"
    INFO = "info"
    DEBUG = "debug"


@dataclasses.dataclass(frozen=True)
class LogStep:
    level: Level
    text: Template
    pos: Pos
    kind: Literal["log"] = "log"


GRAMMAR = "log_step: LOG NAME STRING _NL"
KEYWORDS = {"LOG": "log"}
ORDER = 70


def _log(tree: TreeBuilder, items: list[Any]) -> LogStep:
    level = items[1]
    levels = [lv.value for lv in Level]
    if str(level) not in levels:
        raise SpecError(
            f"log: unknown level {str(level)!r}; expected one of {', '.join(levels)}"
            + did_you_mean(str(level), levels),
            tree.pos(level),
        )
    text = parse_template(str(items[2]), tree.pos(items[2]))
    return LogStep(Level(str(level)), text, tree.pos(items[0]))


def _log_step(tree: TreeBuilder, items: list[Any]) -> LogStep | None:
    return tree.guard(_log, tree, items)


TRANSFORMS: dict[str, StepTransform] = {"log_step": _log_step}


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
