"""``split attachments``: one branch per attachment, branch IDs in the MPL."""

from __future__ import annotations

from collections.abc import Callable

from flowrt.engine.exchange import Attachment
from flowrt.mpl.model import MplStatus
from tests.engine.conftest import Harness, flow_text, message

SPLIT = """
    split attachments
    set property "document" = "${attachment.name}"
    set header "X-Index" = "${attachment.index}"
"""


async def test_no_attachments_completes_with_a_note(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text(SPLIT))
    result, entry = await h.run(message())
    assert h.sent == [] and result.status is MplStatus.COMPLETED
    assert entry.filter_note == "no attachments: nothing to split, nothing is sent"
    assert [s.step_id for s in entry.runs[0].steps] == ["split attachments"]


async def test_one_attachment_one_branch(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text(SPLIT))
    _, entry = await h.run(message(attachments=(("a.pdf", "application/pdf"),)))
    ((_, out),) = h.sent
    assert out.branch == "attachment-1" and out.attachment is not None
    assert out.attachment.name == "a.pdf" and out.properties["document"] == "a.pdf"
    assert [(s.step_id, s.branch) for s in entry.runs[0].steps] == [
        ("split attachments", ""),
        ("set property document", "attachment-1"),
        ("set header X-Index", "attachment-1"),
        ("receiver out", "attachment-1"),
    ]


async def test_three_attachments_three_branches_each_with_only_its_attachment(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text(SPLIT))
    files = (("a.pdf", "application/pdf"), ("b.png", "image/png"), ("a.pdf", "text/plain"))
    result, entry = await h.run(message(attachments=files))
    assert result.sent == 3
    assert [out.branch for _, out in h.sent] == ["attachment-1", "attachment-2", "attachment-3"]
    for index, (_, out) in enumerate(h.sent, 1):
        assert out.attachments == [out.attachment]
        assert out.headers.get("X-Index") == str(index)
    assert [out.attachment.content_type for _, out in h.sent if out.attachment] == [
        "application/pdf",
        "image/png",
        "text/plain",
    ]
    branches = [s.branch for s in entry.runs[0].steps]
    assert branches.count("attachment-2") == 3  # two steps and the delivery
    assert sorted({b for b in branches if b}) == ["attachment-1", "attachment-2", "attachment-3"]


async def test_a_filter_after_the_split_drops_single_branches(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('split attachments\nfilter attachment.name matches "(?i)\\\\.pdf$"'))
    files = (("a.pdf", "application/pdf"), ("b.png", "image/png"))
    result, entry = await h.run(message(attachments=files))
    assert [out.branch for _, out in h.sent] == ["attachment-1"]
    assert result.status is MplStatus.COMPLETED and entry.filter_note is None


async def test_every_branch_filtered_notes_each(harness: Callable[..., Harness]) -> None:
    h = harness(flow_text('split attachments\nfilter attachment.name = "nothing"'))
    files = (("a.pdf", "application/pdf"), ("b.png", "image/png"))
    _, entry = await h.run(message(attachments=files))
    assert h.sent == []
    assert entry.filter_note is not None
    assert entry.filter_note.startswith("attachment-1: filtered at line")
    assert "; attachment-2: filtered at line" in entry.filter_note


async def test_inline_parts_of_the_html_are_not_split_and_go_with_each_branch(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text(SPLIT))
    ex = message(attachments=(("a.pdf", "application/pdf"),))
    ex.html = b'<img src="cid:logo@x">'
    ex.related = [Attachment("", "image/png", b"png", "inline", "logo@x")]
    result, _ = await h.run(ex)
    assert result.sent == 1
    ((_, out),) = h.sent
    assert out.attachment is not None and out.attachment.name == "a.pdf"
    assert out.html == b'<img src="cid:logo@x">'
    assert [a.content_id for a in out.related] == ["logo@x"]


async def test_attachments_drop_leaves_the_inline_parts_of_the_html(
    harness: Callable[..., Harness],
) -> None:
    h = harness(flow_text('attachments drop "*"'))
    ex = message(attachments=(("a.pdf", "application/pdf"),))
    ex.related = [Attachment("", "image/png", b"png", "inline", "logo@x")]
    await h.run(ex)
    ((_, out),) = h.sent
    assert out.attachments == []
    assert [a.content_id for a in out.related] == ["logo@x"]
