"""Each step's behaviour, seen in what is delivered and in the MPL."""

from __future__ import annotations

from collections.abc import Callable

from flowrt.mpl.model import MplStatus, StepStatus
from tests.engine.conftest import Harness, flow_text, message


async def test_set_header_property_and_body(harness: Callable[..., Harness]) -> None:
    h = harness(
        flow_text(
            """
            set header "X-Forwarded-By" = "flowrt"
            set header "Subject" = "Fwd: ${header.Subject}"
            set property "customer" = header.From
            set body = "from ${property.customer}: ${body}"
            """
        )
    )
    result, entry = await h.run()
    assert result.status is MplStatus.COMPLETED and result.sent == 1
    ((name, out),) = h.sent
    assert name == "out"
    assert out.headers.get("x-forwarded-by") == "flowrt"
    assert out.headers.get_all("Subject") == ["Fwd: Invoice 42"]
    assert out.properties["customer"] == "alice@example.com"
    assert out.text == "from alice@example.com: hello"
    steps = entry.runs[0].steps
    assert [s.step_id for s in steps] == [
        "set header X-Forwarded-By",
        "set header Subject",
        "set property customer",
        "set body",
        "receiver out",
    ]
    assert [s.model_step_id for s in steps[:4]] == [
        h.line('"X-Forwarded-By"'),
        h.line('"Subject"'),
        h.line('"customer"'),
        h.line("set body"),
    ]
    assert steps[4].model_step_id == h.line("receiver mail out")
    assert all(s.status is StepStatus.COMPLETED for s in steps)


async def test_set_body_keeps_a_charset_that_holds_the_text(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('set body = "Grüße ${header.Subject}"'))
    ex = message()
    ex.charset = "iso-8859-1"
    await h.run(ex)
    ((_, out),) = h.sent
    assert out.charset == "iso-8859-1" and out.body == "Grüße Invoice 42".encode("latin-1")


async def test_remove_header_property_and_body(harness: Callable[..., Harness]) -> None:
    h = harness(
        flow_text(
            """
            set property "p" = "x"
            remove header "received"
            remove property "p"
            remove property "never-set"
            remove body
            """
        )
    )
    ex = message(headers=(("Received", "a"), ("RECEIVED", "b"), ("X-Keep", "1")))
    result, _ = await h.run(ex)
    assert result.ok
    ((_, out),) = h.sent
    assert out.headers.get_all("Received") == [] and out.headers.get("X-Keep") == "1"
    assert "p" not in out.properties and out.body == b""


async def test_filter_lets_a_matching_message_through(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text('filter header.Subject matches "(?i)invoice"'))
    result, entry = await h.run(message("INVOICE 7"))
    assert result.status is MplStatus.COMPLETED and result.note is None
    assert len(h.sent) == 1 and entry.filter_note is None
    assert entry.runs[0].steps[0].status is StepStatus.COMPLETED


async def test_filter_completes_a_message_that_does_not_match_with_a_note(
    harness: Callable[..., Harness],
) -> None:
    h = harness(
        flow_text(
            """
            filter header.Subject matches "(?i)invoice"
            set header "X-After" = "not reached"
            """
        )
    )
    result, entry = await h.run(message("Lunch?"))
    assert result.status is MplStatus.COMPLETED and result.sent == 0
    assert h.sent == []
    line = h.line("filter")
    assert entry.status is MplStatus.COMPLETED
    assert entry.filter_note == (
        f'filtered at line {line}: filter header.Subject matches "(?i)invoice"'
    )
    assert result.note == entry.filter_note
    (step,) = entry.runs[0].steps
    assert (step.step_id, step.model_step_id, step.status) == ("filter", line, StepStatus.FILTERED)


ROUTER = """
    route when header.Subject contains "urgent" to oncall
    route when header.Subject contains "invoice" to accounting
    route otherwise to tickets
    log info "routed"
"""


async def test_route_first_match_wins(harness: Callable[..., Harness]) -> None:
    text = flow_text(ROUTER, receivers=("oncall", "accounting", "tickets"))
    h = harness(text)
    _, entry = await h.run(message("urgent invoice"))
    assert [name for name, _ in h.sent] == ["oncall"]
    route = entry.runs[0].steps[0]
    assert route.step_id == "route" and route.model_step_id == h.line("to oncall")
    assert h.events[0].note == f"to oncall (line {h.line('to oncall')})"
    assert [s.step_id for s in entry.runs[0].steps] == ["route", "log info", "receiver oncall"]


async def test_route_second_and_otherwise(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text(ROUTER, receivers=("oncall", "accounting", "tickets")))
    _, entry = await h.run(message("invoice 3"))
    await h.run(message("hello"))
    assert [name for name, _ in h.sent] == ["accounting", "tickets"]
    assert entry.runs[0].steps[0].model_step_id == h.line("to accounting")


async def test_no_route_matched_completes_with_a_note_and_sends_nothing(
    harness: Callable[..., Harness],
) -> None:
    text = flow_text(
        """
        route when header.Subject contains "urgent" to oncall
        route when header.Subject contains "invoice" to accounting
        """,
        receivers=("oncall", "accounting"),
    )
    h = harness(text)
    result, entry = await h.run(message("hello"))
    assert h.sent == [] and result.status is MplStatus.COMPLETED
    assert entry.filter_note == f"no route matched (line {h.line('to oncall')})"
    assert [s.step_id for s in entry.runs[0].steps] == ["route"]


async def test_without_route_steps_every_receiver_gets_the_message(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('set header "X" = "1"', receivers=("a", "b", "c")))
    result, entry = await h.run()
    assert [name for name, _ in h.sent] == ["a", "b", "c"] and result.sent == 3
    assert [s.step_id for s in entry.runs[0].steps][1:] == [
        "receiver a",
        "receiver b",
        "receiver c",
    ]


async def test_mpl_property_is_searchable_in_the_store(harness: Callable[..., Harness]) -> None:
    h = harness(
        flow_text(
            """
            mpl property "customer" = header.From
            mpl property "order" = "${header.X-Order}"
            """
        )
    )
    first, _ = await h.run(message(headers=(("X-Order", "A-1"),)))
    await h.run(message(headers=(("X-Order", "B-2"),)))
    h.recorder.flush()
    found = h.recorder.store.list_entries(properties=[("order", "A-1")])
    assert [s.message_id for s in found] == [first.message_id]
    entry = h.entry(first.message_id)
    assert entry.custom_properties == {"customer": ("alice@example.com",), "order": ("A-1",)}
    both = h.recorder.store.list_entries(properties=[("customer", "alice@example.com")])
    assert len(both) == 2


async def test_attachments_keep_is_case_insensitive(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text('attachments keep "*.pdf"'))
    files = (("a.PDF", "application/pdf"), ("b.txt", "text/plain"), ("c.pdf", "application/pdf"))
    await h.run(message(attachments=files))
    ((_, out),) = h.sent
    assert [a.name for a in out.attachments] == ["a.PDF", "c.pdf"]


async def test_attachments_drop_is_case_insensitive(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text('attachments drop "Logo*.PNG"'))
    files = (("logo-small.png", "image/png"), ("report.pdf", "application/pdf"))
    await h.run(message(attachments=files))
    ((_, out),) = h.sent
    assert [a.name for a in out.attachments] == ["report.pdf"]


async def test_missing_header_is_empty_and_exists_tells_it_apart(
    harness: Callable[..., Harness],
) -> None:
    h = harness(
        flow_text(
            """
            set property "missing" = "[${header.X-Missing}]"
            set property "empty" = "[${header.X-Empty}]"
            filter header.X-Empty exists and not header.X-Missing exists
            """
        )
    )
    await h.run(message(headers=(("X-Empty", ""),)))
    ((_, out),) = h.sent
    assert out.properties["missing"] == "[]" and out.properties["empty"] == "[]"
    result, entry = await h.run(message())  # no X-Empty at all: the filter stops it
    assert len(h.sent) == 1 and result.sent == 0 and entry.filter_note is not None


async def test_repeated_headers_are_joined_in_expressions(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text('set property "hops" = header.received'))
    await h.run(message(headers=(("Received", "a"), ("X-Other", "x"), ("RECEIVED", "b"))))
    ((_, out),) = h.sent
    assert out.properties["hops"] == "a, b"


async def test_a_message_flows_through_unchanged_without_steps(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text(""))
    result, entry = await h.run()
    assert result.ok and [s.step_id for s in entry.runs[0].steps] == ["receiver out"]
