"""``on-error``: how many attempts a mail gets and where it ends after the last one."""

from __future__ import annotations

import datetime as dt

from flowrt.dsl import model as m
from tests.dsl.helpers import errors, flow, only_flow


def on_error(*lines: str) -> str:
    body = "".join(f"        {line}\n" for line in lines)
    return flow(tail=f"    on-error {{\n{body}    }}\n")


def test_defaults_bound_the_attempts_and_keep_the_retry_meaning() -> None:
    policy = only_flow(on_error("retry 3 every 30s backoff 2")).on_error
    assert (policy.retries, policy.interval, policy.backoff) == (3, dt.timedelta(seconds=30), 2)
    assert policy.max_attempts == 5
    assert policy.dead_letter == m.DeadLetter("default")
    assert policy.permanent_errors == "retry"
    assert m.DEFAULT_POLICY.max_attempts == 5  # a flow without on-error ends too


def test_limit_place_and_permanent_errors() -> None:
    policy = only_flow(
        on_error('dead-letter folder "Failed"', "max-attempts 2", "permanent-errors dead-letter")
    ).on_error
    assert policy.retries == 0  # no retry within a run, only across polls
    assert policy.max_attempts == 2
    assert policy.dead_letter == m.DeadLetter("folder", "Failed")
    assert policy.permanent_errors == "dead-letter"
    assert only_flow(on_error("dead-letter delete")).on_error.dead_letter.kind == "delete"
    named = only_flow(on_error("dead-letter receiver out")).on_error.dead_letter
    assert named == m.DeadLetter("receiver", "out")


def test_bad_values_name_the_line_and_what_is_expected() -> None:
    [(_, code, message)] = errors(on_error("max-attempts 0"))
    assert "max-attempts" in message and code
    [(_, _, message)] = errors(on_error("dead-letter trash"))
    assert "folder" in message and "keep" in message
    [(_, code, message)] = errors(on_error("dead-letter receiver nobody"))
    assert code == "unknown-receiver" and "'nobody'" in message
    [(_, _, message)] = errors(on_error("permanent-errors never"))
    assert "dead-letter" in message and "retry" in message
