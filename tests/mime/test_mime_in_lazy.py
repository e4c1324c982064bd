"""A large base64 attachment is left in the mail's bytes (mime/lazy.py): read when a step
uses it, re-encoded a step at a time when it is forwarded, the same bytes either way; text
that is not plain base64 is decoded at once, its defects named as before."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import os

import pytest

from flowrt.adapters.mail.mime import lazy
from flowrt.adapters.mail.mime.lazy import LazyBase64, lazy_base64
from flowrt.adapters.mail.mime.pieces import Base64, join_pieces
from flowrt.adapters.mail.mime.read import mail_to_exchange
from flowrt.engine.exchange import Attachment, Exchange, Headers
from tests.mime.conftest import composer
from tests.mime.test_mime_in_cut import big_mail

FORWARD = 'from "a@example.com"\nto "b@example.com"\nattachments from-message'


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 56, 57, 58, 1000, 4099])
@pytest.mark.parametrize("step", [4, 7, 78, 1 << 20])
def test_plain_base64_is_its_content_in_any_steps(
    size: int, step: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lazy, "_STEP", step)
    content = os.urandom(size)
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    found = lazy_base64(memoryview(encoded))
    assert found is not None and found.size == size
    assert found.read() == b"".join(found.steps()) == content
    # re-encoded as the composer writes it: 76-character lines across the steps' edges
    assert join_pieces([Base64(found)]) == join_pieces([Base64(content)]) == encoded


@pytest.mark.parametrize(
    "encoded",
    [
        b"QUJD\r\nRE*F\r\n",  # a character outside base64
        b"QQ==\r\nQUJD\r\n",  # padding before the end
        b"QUJDR\r\n",  # a group cut short
        b"QUJ\r\n",  # padding missing
        b"Q===\r\n",
    ],
)
def test_text_that_is_not_plain_base64_is_not_left_encoded(encoded: bytes) -> None:
    assert lazy_base64(memoryview(encoded)) is None


def test_a_large_attachment_is_read_only_when_used() -> None:
    payload = os.urandom(600_000)
    exchange = mail_to_exchange(big_mail(payload))
    (attachment,) = exchange.attachments
    assert isinstance(attachment.source, LazyBase64)
    assert attachment.size == len(payload)  # known without decoding
    assert attachment.data == payload
    assert attachment.source == payload  # decoded once, then kept
    assert "mail.defects" not in exchange.properties


def test_a_broken_large_attachment_is_decoded_at_once_and_named() -> None:
    payload = os.urandom(600_000)
    raw = big_mail(payload).replace(b"--b--", b"QQ=\r\n--b--")
    exchange = mail_to_exchange(raw)
    (attachment,) = exchange.attachments
    assert isinstance(attachment.source, bytes)
    assert attachment.data.startswith(payload)
    assert "padding" in str(exchange.properties.get("mail.defects", ""))


def test_a_forward_from_the_mail_is_the_forward_of_the_decoded_content() -> None:
    payload = os.urandom(2_000_000)
    (read,) = mail_to_exchange(big_mail(payload)).attachments

    exchange = Exchange(body=b"see attached", headers=Headers([("Subject", "big")]))

    def forward(attachment: Attachment) -> bytes:
        exchange.attachments = [attachment]
        return composer(FORWARD).compose(exchange).data

    sent = forward(read)
    assert isinstance(read.source, LazyBase64)  # composing did not decode it
    assert sent == forward(Attachment(read.name, read.content_type, payload))
    parsed = email.message_from_bytes(sent, policy=email.policy.default)
    (part,) = parsed.iter_attachments()
    assert part.get_content() == payload


def test_equal_content_compares_equal_however_it_is_held() -> None:
    content = b"abc" * 100
    encoded = memoryview(base64.encodebytes(content))
    held = Attachment("a.bin", "application/octet-stream", content)
    left = Attachment("a.bin", "application/octet-stream", LazyBase64(encoded, len(content)))
    assert left == held and left.data == binascii.a2b_base64(encoded)
