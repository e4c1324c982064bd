"""`flowrt status` shows LAST_ERROR only while the flow is in trouble (issue 20, point 9)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flowrt.runtime.flow_instance import FlowInstance
from flowrt.runtime.status import ERROR, STARTED


def _instance() -> Any:
    deployment = SimpleNamespace(name="f", version=1)
    instance = FlowInstance(
        deployment,  # type: ignore[arg-type]
        security=None,  # type: ignore[arg-type]
        recorder=None,  # type: ignore[arg-type]
        state=None,  # type: ignore[arg-type]
        adapters=None,  # type: ignore[arg-type]
    )
    instance.status.state = STARTED
    return instance


def test_a_good_poll_after_failed_ones_clears_the_last_error() -> None:
    instance = _instance()
    error = "MailConnectException: x"
    health = SimpleNamespace(
        last_poll=1.0, last_success=0.0, consecutive_failures=2, last_error=error
    )
    instance._poller = SimpleNamespace(health=health)
    instance.refresh()
    assert (instance.status.state, instance.status.last_error) == (
        ERROR,
        "MailConnectException: x",
    )

    health.consecutive_failures, health.last_success = 0, 2.0
    instance.refresh()

    assert (instance.status.state, instance.status.last_error, instance.status.reason) == (
        STARTED,
        "",
        "",
    )
