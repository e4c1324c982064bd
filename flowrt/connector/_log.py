"""The connector's structured log: one line per decision, logfmt for people or JSON for tools.

The logger is built per server rather than by ``structlog.configure()``, so that a connector
started inside another process (the tests, the benchmark) does not change that process's
logging.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger, Processor

__all__ = ["LogFormat", "make_logger"]

LogFormat = Literal["text", "json"]

_KEY_ORDER = ["timestamp", "level", "event", "client", "location", "virtual", "mapping"]
_SECRET_WORDS = ("token", "password", "secret")


def _drop_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Defence in depth: no code path logs the token, and a key that sounds like one is dropped
    # should one ever be added by mistake (``token_source`` names where it comes from only).
    for key in [k for k in event_dict if k != "token_source"]:
        if any(word in key.lower() for word in _SECRET_WORDS):
            event_dict[key] = "[redacted]"
    return event_dict


def make_logger(
    stream: TextIO | None = None,
    fmt: LogFormat = "text",
    *,
    level: int = logging.INFO,
    processors: list[Processor] | None = None,
) -> FilteringBoundLogger:
    """A logger writing to ``stream`` (default stderr). ``processors`` replaces the renderer
    chain (tests capture events with it)."""
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.LogfmtRenderer(key_order=_KEY_ORDER, drop_missing=True)
    chain: list[Processor] = [_drop_secrets]
    chain += processors or [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
    ]
    return cast(
        FilteringBoundLogger,
        structlog.wrap_logger(
            structlog.PrintLogger(stream or sys.stderr),
            processors=chain,
            wrapper_class=structlog.make_filtering_bound_logger(level),
            context_class=dict,
        ),
    )
