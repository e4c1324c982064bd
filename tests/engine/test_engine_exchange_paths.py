"""The exchange operations the per-message path relies on (copy, joined header values)."""

from __future__ import annotations

from flowrt.engine.exchange import Attachment, Exchange, Headers


def test_copy_is_independent_but_keeps_the_ids() -> None:
    original = Exchange(
        body=b"x",
        headers=Headers([("Subject", "s")]),
        properties={"p": "1"},
        attachments=[Attachment("a.pdf", "application/pdf", b"%PDF")],
    )
    clone = original.copy()
    clone.headers.set("Subject", "changed")
    clone.properties["p"] = "2"
    clone.attachments.clear()
    clone.body = b"y"
    assert original.headers.get("Subject") == "s" and original.properties == {"p": "1"}
    assert len(original.attachments) == 1 and original.body == b"x"
    assert (clone.message_id, clone.correlation_id) == (
        original.message_id,
        original.correlation_id,
    )
    assert type(clone) is Exchange and clone.created == original.created


def test_joined_is_case_insensitive_and_joins_repeats() -> None:
    headers = Headers([("Received", "a"), ("X-Long-Name", "z"), ("received", "b"), ("To", "t")])
    assert headers.joined("RECEIVED") == "a, b"
    assert headers.joined("to") == "t"
    assert headers.joined("X-Missing") == ""
    assert headers.joined("x-long-name") == "z"


def test_new_message_ids_are_time_ordered_guids() -> None:
    ids = [Exchange().message_id for _ in range(50)]
    assert all(len(i) == 36 and i[14] == "7" for i in ids)  # UUID version 7
    assert len(set(ids)) == 50
