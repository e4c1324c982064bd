"""DSL spec of the flow itself and of its ``on-error`` block."""

from __future__ import annotations

import datetime as dt

from flowrt.dsl.model import MplLogLevel, RetryPolicy
from flowrt.dsl.spec import BlockSpec, Report, Settings, SettingSpec
from flowrt.dsl.values import MAX_BACKOFF, ValueReader


def _description(r: ValueReader) -> str:
    value = r.string("a quoted description")
    r.end()
    return value.text


def _log_level(r: ValueReader) -> MplLogLevel:
    return MplLogLevel(r.choice([lv.value for lv in MplLogLevel]))


FLOW_SETTINGS = (
    SettingSpec("description", '"TEXT"', "What the flow is for.", _description),
    SettingSpec(
        "log-level",
        "none | info | debug | trace",
        "How much the MPL keeps: none, steps (info), debug log lines, or the message "
        "content after each step (trace, capped in size).",
        _log_level,
        default="info",
    ),
)


def _retry(r: ValueReader) -> RetryPolicy:
    retries = r.integer("the number of retries", minimum=1)
    r.keyword("every")
    interval = r.duration(above=dt.timedelta(0))
    backoff = 1.0
    if r.maybe_keyword("backoff"):
        value = r.peek()
        backoff = r.number("a backoff factor such as 2")
        if backoff < 1 and value is not None:
            raise r.fail(
                value, f"the backoff factor must be at least 1, got {backoff:g}", "out-of-range"
            )
        if backoff > MAX_BACKOFF and value is not None:
            raise r.fail(
                value,
                f"the backoff factor must be at most {MAX_BACKOFF:g}, got {backoff:g}",
                "out-of-range",
            )
    r.end()
    return RetryPolicy(retries, interval, backoff)


def _build_on_error(s: Settings, args: tuple[str, ...], report: Report) -> RetryPolicy | None:
    if args:
        report.error(s.pos, "syntax", "on-error takes no arguments: on-error { ... }")
    policy: RetryPolicy | None = s.get("retry")
    return policy


ON_ERROR = BlockSpec(
    keyword="on-error",
    adapter=None,
    summary="What happens when processing fails. Without it a failed message is ESCALATED; "
    "with a retry policy it is retried (RETRY) and then FAILED.",
    settings=(
        SettingSpec(
            "retry",
            "N every DURATION [backoff FACTOR]",
            "Retry N times, waiting DURATION, multiplied by FACTOR after each attempt. "
            "Errors that cannot heal (a 5xx reply, a wrong password) are not retried.",
            _retry,
            example="retry 3 every 30s backoff 2",
        ),
    ),
    required=("retry",),
    build=_build_on_error,
    example="on-error {\n    retry 3 every 30s backoff 2\n}",
)
