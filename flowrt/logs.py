"""Runtime logs with structlog: one JSON object per line when not on a terminal, readable
colour output on a terminal. Keys that look like secrets are masked in every line."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEY = re.compile(r"pass(word)?|secret|token|authorization|credential_value", re.I)


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in [key for key in event if _secret(key)]:
        event[key] = "********"
    return event


@functools.lru_cache(maxsize=1024)
def _secret(key: str) -> bool:
    # the same few field names come by in every line: look each one up once
    return _SECRET_KEY.search(key) is not None


def configure(
    *, stream: TextIO | None = None, json: bool | None = None, level: int = logging.INFO
) -> None:
    """Configure structlog for the runtime; ``json`` defaults to "stream is not a tty"."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.format_exc_info
            if json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # a line in one write: print() writes the line and its newline apart, two system
        # calls on a stderr that writes through (a pipe to journald, a container's log)
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
