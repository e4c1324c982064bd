"""``log`` steps (MPL lines and structlog lines, per log-level) and content at ``trace``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import structlog
from structlog.testing import capture_logs

from flowrt.mpl.model import LogLevel
from tests.engine.conftest import Harness, flow_text, message

LOGS = """
    log error "e ${header.Subject}"
    log warn "w ${header.Subject}"
    log info "i ${header.Subject}"
    log debug "d ${header.Subject}"
"""


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        ("none", []),
        ("info", ["error", "warn", "info"]),
        ("debug", ["error", "warn", "info", "debug"]),
        ("trace", ["error", "warn", "info", "debug"]),
    ],
)
async def test_log_lines_in_the_mpl_follow_the_flows_log_level(
    harness: Callable[..., Harness], level: str, kept: list[str]
) -> None:
    h = harness(flow_text(LOGS, log_level=level))
    _, entry = await h.run()
    assert entry.log_level is LogLevel(level)
    assert [(line.level, line.text) for line in entry.log] == [
        (lv, f"{lv[0]} Invoice 42") for lv in kept
    ]


async def test_log_steps_write_structlog_lines_with_message_id_and_flow(
    harness: Callable[..., Harness],
) -> None:
    with capture_logs() as logs:
        h = harness(flow_text(LOGS, log_level="none"))
        result, _ = await h.run()
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("error", "e Invoice 42"),
        ("warning", "w Invoice 42"),
        ("info", "i Invoice 42"),
        ("debug", "d Invoice 42"),
    ]
    assert all(e["message_id"] == result.message_id and e["flow"] == "t" for e in logs)


async def test_a_debug_line_nobody_reads_is_not_rendered(
    harness: Callable[..., Harness],
) -> None:
    """At MPL level info, with the runtime log at info, a debug step costs no rendering."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(20))
    try:
        h = harness(flow_text('log debug "${property.x}"', log_level="info"))
        ex = message()

        class Exploding(dict[str, object]):
            def get(self, *args: object) -> object:
                raise AssertionError("the template was rendered")

        ex.properties = Exploding()
        result, entry = await h.run(ex)
        assert result.ok and entry.log == ()
    finally:
        structlog.reset_defaults()


async def test_trace_keeps_the_message_after_each_step(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text('set header "X-Step" = "one"\nset body = "changed"', log_level="trace"))
    _, entry = await h.run()
    first, second, _delivery = entry.runs[0].steps
    assert first.content is not None and ("X-Step", "one") in first.content.headers
    assert first.content.body == "hello"
    assert second.content is not None and second.content.body == "changed"


async def test_info_keeps_no_content(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text('set header "X-Step" = "one"'))
    _, entry = await h.run()
    assert all(step.content is None for step in entry.runs[0].steps)


async def test_level_none_keeps_status_and_properties_but_no_steps(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('mpl property "p" = "v"', log_level="none"))
    _, entry = await h.run()
    assert entry.runs == () and entry.custom_properties == {"p": ("v",)}
