"""The example flows in flows/ stay valid, and mean what they say."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flowrt.adapters.mail import model as mail
from flowrt.dsl import load_flow, model, parse_file
from flowrt.engine.steps.route import RouteStep

FLOWS = sorted((Path(__file__).parents[2] / "flows").glob("*.flow"))


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_example_flow_is_valid(path: Path) -> None:
    result = parse_file(path)
    assert result.ok, result.render()
    assert not result.diagnostics, result.render()


def test_design_example_parses_into_the_model() -> None:
    flow = load_flow(Path(__file__).parents[2] / "flows" / "mail.flow")
    assert flow.name == "invoice-forward"
    sender = flow.sender
    assert sender is not None
    assert sender.protocol == "imap"
    assert str(sender.connection.address) == "mail.plant.example:143"
    assert sender.connection.proxy.type == "on-premise"
    assert sender.connection.proxy.location is not None
    assert sender.connection.proxy.location.literal == "plant-1"
    assert sender.connection.auth == mail.Auth("plain", "plant-mailbox")
    assert sender.connection.timeout == dt.timedelta(seconds=30)
    assert sender.post_process == mail.PostProcess("archive", "Processed")
    assert sender.poll == mail.PollEvery(dt.timedelta(minutes=5))
    assert sender.max_messages == 50
    assert [s.kind for s in flow.steps] == ["filter", "set", "set", "log"]
    (receiver,) = flow.receivers
    assert receiver.name == "accounting"
    assert receiver.connection.address.port == 465
    assert receiver.attachments_from_message
    assert flow.on_error == model.RetryPolicy(3, dt.timedelta(seconds=30), 2.0)
    assert sender.positions["auth"].line == 10
    assert flow.steps[0].pos.line == 20


def test_router_example_has_two_receivers_and_a_router() -> None:
    flow = load_flow(Path(__file__).parents[2] / "flows" / "imap-idle-router.flow")
    assert [r.name for r in flow.receivers] == ["oncall", "tickets"]
    routes = [s for s in flow.steps if isinstance(s, RouteStep)]
    assert [r.receiver for r in routes] == ["oncall", "tickets"]
    assert routes[1].condition is None
    assert isinstance(flow.sender.poll if flow.sender else None, mail.PollIdle)
