"""``on-error``: retries as runs, final statuses, what is and is not retried."""

from __future__ import annotations

from collections.abc import Callable

from flowrt.engine.exchange import Exchange
from flowrt.errors import (
    AuthenticationFailedException,
    MailConnectException,
    ProcessingError,
    SocketTimeoutException,
)
from flowrt.mpl.model import MplStatus, StepStatus
from tests.engine.conftest import Harness, flow_text


def failing(times: int, error: Callable[[], Exception]) -> Callable[[str, Exchange], object]:
    """A delivery that fails ``times`` times with ``error()``, then succeeds."""
    calls = {"n": 0}

    async def deliver(name: str, ex: Exchange) -> None:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error()

    return deliver


def connect_error() -> Exception:
    error = MailConnectException("Could not connect to SMTP host: smtp.example.com, port: 465")
    error.__cause__ = SocketTimeoutException("connect timed out")
    return error


async def test_retries_are_runs_then_failed_with_the_chain(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('set header "X" = "1"', retry="3 every 30s backoff 2"))
    h.fail_delivery = failing(99, connect_error)  # type: ignore[assignment]
    result, entry = await h.run()
    assert result.status is MplStatus.FAILED and result.runs == 4
    assert h.waits == [30, 60, 120]
    assert [run.status for run in entry.runs] == [MplStatus.RETRY] * 3 + [MplStatus.FAILED]
    for run in entry.runs:
        assert [s.step_id for s in run.steps] == ["set header X", "receiver out"]
        assert run.steps[1].status is StepStatus.FAILED
    assert entry.error is not None
    assert entry.error.chain == (
        "MailConnectException: Could not connect to SMTP host: smtp.example.com, port: 465\n"
        "  nested exception is:\n\tSocketTimeoutException: connect timed out"
    )
    assert entry.error.failed_step == f"receiver out (line {h.line('receiver mail out')})"
    assert entry.status is MplStatus.FAILED and entry.log_end is not None


async def test_without_a_policy_a_failure_is_escalated_at_once(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('set header "X" = "1"'))
    h.fail_delivery = failing(99, connect_error)  # type: ignore[assignment]
    result, entry = await h.run()
    assert result.status is MplStatus.ESCALATED and result.runs == 1 and h.waits == []
    assert [run.status for run in entry.runs] == [MplStatus.ESCALATED]


async def test_an_error_that_cannot_heal_is_not_retried(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text("", retry="3 every 30s"))
    h.fail_delivery = failing(99, lambda: AuthenticationFailedException("535 5.7.8 bad login"))  # type: ignore[assignment]
    result, entry = await h.run()
    assert result.status is MplStatus.FAILED and len(entry.runs) == 1 and h.waits == []
    assert entry.error is not None and entry.error.levels[0].type == "AuthenticationFailedException"


async def test_success_on_the_second_attempt_completes_with_two_runs(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('set property "n" = "1"', retry="3 every 30s"))
    h.fail_delivery = failing(1, connect_error)  # type: ignore[assignment]
    result, entry = await h.run()
    assert result.status is MplStatus.COMPLETED and result.runs == 2 and h.waits == [30]
    assert [run.status for run in entry.runs] == [MplStatus.RETRY, MplStatus.COMPLETED]
    assert entry.status is MplStatus.COMPLETED
    assert entry.error is not None  # the failure of run 1 stays visible
    assert result.error is not None and result.sent == 1


async def test_each_attempt_starts_from_the_message_as_it_came_in(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('set body = "${body}+"', retry="2 every 1s"))
    h.fail_delivery = failing(2, connect_error)  # type: ignore[assignment]
    await h.run()
    ((_, out),) = h.sent
    assert out.text == "hello+"


async def test_a_retry_does_not_send_again_to_a_receiver_that_accepted(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text("", receivers=("a", "b"), retry="2 every 1s"))
    calls: list[str] = []

    async def b_fails_once(name: str, ex: Exchange) -> None:
        calls.append(name)
        if name == "b" and calls.count("b") == 1:
            raise connect_error()

    h.fail_delivery = b_fails_once  # type: ignore[assignment]
    result, entry = await h.run()
    assert result.ok and calls == ["a", "b", "b"]
    assert [name for name, _ in h.sent] == ["a", "b"]
    second = entry.runs[1].steps
    assert [(s.step_id, s.status) for s in second] == [
        ("receiver a", StepStatus.SKIPPED),
        ("receiver b", StepStatus.COMPLETED),
    ]


async def test_a_foreign_delivery_error_is_wrapped_and_retried_when_it_may_heal(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text("", retry="1 every 5s"))
    h.fail_delivery = failing(99, lambda: ConnectionResetError(104, "Connection reset by peer"))  # type: ignore[assignment]
    result, entry = await h.run()
    assert result.status is MplStatus.FAILED and h.waits == [5]
    assert entry.error is not None
    assert [lv.type for lv in entry.error.levels] == ["MessagingException", "ConnectionResetError"]
    assert entry.error.levels[0].message == "receiver out failed"


async def test_a_failing_step_in_a_branch_fails_the_attempt(
    harness: Callable[..., Harness], tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    (tmp_path / "checks.py").write_text(
        "from flowrt.errors import ProcessingError\n"
        "def second_fails(ex):\n"
        "    if ex.branch == 'attachment-2':\n"
        "        raise ProcessingError('busy', retryable=True)\n"
    )
    h = harness(flow_text('split attachments\nscript "checks:second_fails"', retry="1 every 1s"))
    from tests.engine.conftest import message

    result, entry = await h.run(
        message(attachments=(("a.pdf", "application/pdf"), ("b.pdf", "application/pdf")))
    )
    assert result.status is MplStatus.FAILED and len(entry.runs) == 2
    assert h.sent == []  # delivery comes after every branch went through the steps
    failed = [s for s in entry.runs[0].steps if s.status is StepStatus.FAILED]
    assert [(s.step_id, s.branch) for s in failed] == [
        ("script checks:second_fails", "attachment-2")
    ]
    assert isinstance(result.error, ProcessingError)


async def test_an_unreadable_mail_is_recorded_as_failed(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text(""))
    result = h.runner.record_unreadable(ValueError("not a mail"))
    entry = h.entry(result.message_id)
    assert entry.status is MplStatus.ESCALATED
    assert entry.error is not None
    assert [lv.type for lv in entry.error.levels] == ["MessagingException", "ValueError"]
    assert [s.step_id for s in entry.runs[0].steps] == ["sender mail"]
