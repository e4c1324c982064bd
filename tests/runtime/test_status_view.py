"""The status view of many flows is cheap to keep: a flow is re-read and re-serialized only
when something in it changed, and what changed still shows at the next write (issue 21)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from flowrt.runtime.status import ERROR, STARTED, FlowStatus, RuntimeStatus, now_iso
from tests.runtime.test_status_recovery import _instance


def _counting_source() -> Any:
    health = SimpleNamespace(
        last_poll=1.0, last_success=1.0, consecutive_failures=0, last_error="", note=""
    )
    return SimpleNamespace(health=health, health_changes=0, last_hint="", warning="")


def test_a_poll_failure_shows_at_the_next_refresh_and_an_unchanged_flow_is_left_alone() -> None:
    instance = _instance()
    changes: list[str] = []
    instance._on_change = lambda: changes.append("changed")
    source = instance._poller = _counting_source()
    instance.refresh()
    assert instance.status.state == STARTED and changes == ["changed"]
    updated = instance.status.updated

    instance.refresh()  # nothing moved: no change reported, the view stays as it was
    assert changes == ["changed"] and instance.status.updated == updated

    source.health.consecutive_failures = 1
    source.health.last_error = "MailConnectException: Could not connect to IMAP host"
    source.last_hint = "is the server up?"
    source.health_changes += 1
    instance.refresh()
    assert instance.status.state == ERROR
    assert instance.status.last_error.startswith("MailConnectException")
    assert instance.status.last_hint == "is the server up?"
    assert changes == ["changed", "changed"]


def test_a_state_set_by_the_runtime_is_re_evaluated_against_an_unchanged_source() -> None:
    instance = _instance()
    source = instance._poller = _counting_source()
    source.health.consecutive_failures = 3
    source.health.last_error = "boom"
    instance.refresh()
    assert instance.status.state == ERROR
    instance.status.state, instance.status.reason = STARTED, ""  # e.g. restarted by hand
    instance.refresh()
    assert instance.status.state == ERROR and "3 poll(s) failed" in instance.status.reason


def test_the_status_json_shows_every_change_of_every_flow() -> None:
    status = RuntimeStatus(pid=1, host="h", started_at=now_iso(), heartbeat_at=now_iso())
    for i in range(3):
        status.flows[f"f{i}"] = FlowStatus(name=f"f{i}", version=1)
    status.to_json()
    status.flows["f1"].completed = 7
    status.flows["f2"].state = ERROR
    del status.flows["f0"]
    status.flows['new "one"'] = FlowStatus(name='new "one"', version=2)
    data = json.loads(status.to_json())
    assert set(data["flows"]) == {"f1", "f2", 'new "one"'}
    assert data["flows"]["f1"]["completed"] == 7
    assert data["flows"]["f2"]["state"] == ERROR
    expected = {name: dict(vars(flow)) for name, flow in status.flows.items()}
    assert data["flows"] == expected
    assert RuntimeStatus.from_json(data).flows["f1"] == status.flows["f1"]
