"""DSL spec of the flow itself and of its ``on-error`` block."""

from __future__ import annotations

import dataclasses
import datetime as dt

from flowrt.dsl.model import DEFAULT_MAX_ATTEMPTS, DeadLetter, MplLogLevel, RetryPolicy
from flowrt.dsl.spec import BlockSpec, Report, Settings, SettingSpec
from flowrt.dsl.values import MAX_BACKOFF, SpecError, ValueReader


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


def _max_attempts(r: ValueReader) -> int:
    value = r.integer("the number of attempts", minimum=1)
    r.end()
    return value


def _dead_letter(r: ValueReader) -> DeadLetter:
    kind = r.word(["folder", "receiver", "keep", "delete"])
    target = ""
    if kind == "folder":
        target = r.string('a folder name such as "Failed"').text
    elif kind == "receiver":
        name = r.peek()
        if name is None or not name.text.replace("-", "").replace("_", "").isalnum():
            raise SpecError(
                "dead-letter: expected the name of one of the flow's receivers",
                name.pos if name else r.pos,
            )
        r.index += 1
        target = name.text
    r.end()
    return DeadLetter(kind, target)


def _permanent_errors(r: ValueReader) -> str:
    value = r.choice(["dead-letter", "retry"])
    r.end()
    return value


def _build_on_error(s: Settings, args: tuple[str, ...], report: Report) -> RetryPolicy | None:
    if args:
        report.error(s.pos, "syntax", "on-error takes no arguments: on-error { ... }")
    policy: RetryPolicy = s.get("retry") or RetryPolicy(0, dt.timedelta(0))
    return dataclasses.replace(
        policy,
        max_attempts=s.get("max-attempts", DEFAULT_MAX_ATTEMPTS),
        dead_letter=s.get("dead-letter", DeadLetter()),
        permanent_errors=s.get("permanent-errors", "retry"),
    )


ON_ERROR = BlockSpec(
    keyword="on-error",
    adapter=None,
    summary="What happens when processing fails. Without it a failed message is ESCALATED and "
    "handed over again at the next poll; with a retry policy it is retried (RETRY) and then "
    "FAILED, and handed over again after the backoff. Either way a mail is handed over at most "
    "max-attempts times (default 5) and then goes to its dead-letter place.",
    settings=(
        SettingSpec(
            "retry",
            "N every DURATION [backoff FACTOR]",
            "Retry N times, waiting DURATION, multiplied by FACTOR after each attempt. "
            "Errors that cannot heal (a 5xx reply, a wrong password) are not retried. The "
            "same backoff spaces the hand-overs across polls.",
            _retry,
            example="retry 3 every 30s backoff 2",
        ),
        SettingSpec(
            "max-attempts",
            "N",
            "How many times a mail is handed to the flow (across polls and restarts) before "
            "it goes to its dead-letter place.",
            _max_attempts,
            default=str(DEFAULT_MAX_ATTEMPTS),
            example="max-attempts 5",
        ),
        SettingSpec(
            "dead-letter",
            'folder "NAME" | receiver NAME | keep | delete',
            "Where a mail ends after its last attempt: moved to an IMAP folder, handed to one "
            "of the flow's receivers (the original mail attached, with the error chain and "
            "hint), kept, or deleted. Default: IMAP keeps the mail with the keyword "
            "$flowrt-dead, POP3 keeps it; the MPL entry is ESCALATED with a dead-letter property.",
            _dead_letter,
            example='dead-letter folder "Failed"',
        ),
        SettingSpec(
            "permanent-errors",
            "dead-letter | retry",
            "dead-letter: a mail whose error cannot heal (a 5xx reply, a wrong password, a mail "
            "that cannot be read or is refused for safety) goes to its dead-letter place at "
            "once; retry: it is handed over again like any other.",
            _permanent_errors,
            default="retry",
            example="permanent-errors dead-letter",
        ),
    ),
    required=(),
    build=_build_on_error,
    example="on-error {\n    retry 3 every 30s backoff 2\n    max-attempts 5\n"
    '    dead-letter folder "Failed"\n}',
)
