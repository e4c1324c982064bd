"""A composed mail as pieces (flowrt.adapters.mail.mime.pieces): the same bytes, size and
DATA wire form as the joined mail, without a joined copy of a large one."""

from __future__ import annotations

import base64
import email
import email.policy
import os

import pytest

from flowrt.adapters.mail.mime.pieces import JOIN_BELOW, Base64, MailPieces, join_pieces
from flowrt.adapters.mail.smtp.data import end_line, wire_pieces
from flowrt.engine.exchange import Attachment, Exchange, Headers
from tests.mime.conftest import composer
from tests.smtp.test_smtp_large_data import TRICKY


@pytest.mark.parametrize("size", [0, 1, 2, 3, 56, 57, 58, 1000, 57 * 16384 + 5])
def test_size_is_the_joined_size_without_joining(size: int) -> None:
    data = os.urandom(size)
    pieces: list[bytes | Base64] = [b"head\r\n\r\n", Base64(data), b"--end--\r\n"]
    mail = MailPieces(pieces)
    joined = join_pieces(pieces)
    assert len(mail) == len(joined) == len(bytes(mail))
    assert b"".join(mail.chunks()) == joined
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert joined == b"head\r\n\r\n" + encoded + b"--end--\r\n"
    assert mail.isascii()


def test_a_large_mail_stays_in_pieces_and_a_small_one_is_joined() -> None:
    large = MailPieces([b"h\r\n\r\n", Base64(os.urandom(4 * JOIN_BELOW))])
    small = MailPieces([b"h\r\n\r\n", Base64(b"tiny")])
    assert max(len(c) for c in large.chunks()) < len(large) // 3  # encoded a step at a time
    assert list(small.chunks()) == [bytes(small)]
    assert bytes(small) is bytes(small)  # no copy each time it is asked for
    assert large == MailPieces([bytes(large)]) and large != small


@pytest.mark.parametrize("message", TRICKY)
@pytest.mark.parametrize("cut", [1, 2, 5])
@pytest.mark.parametrize("size", [1, 3, 7, 1 << 20])
def test_data_from_pieces_is_the_data_of_the_joined_mail(
    message: bytes, cut: int, size: int
) -> None:
    """Line breaks and leading dots across the pieces' edges (a CR at the end of one piece,
    its LF in the next) come out as they do from the whole mail."""
    mail = MailPieces([message[i : i + cut] for i in range(0, len(message), cut)])
    assert b"".join(wire_pieces(mail, size)) == b"".join(wire_pieces(message, size))
    assert end_line(mail) == end_line(message)


def test_ends_with_the_last_nonempty_piece() -> None:
    assert MailPieces([b"a\r\n", Base64(b"x"), b""]).endswith((b"\n", b"\r"))
    assert not MailPieces([b"a", Base64(b"")]).endswith((b"\n", b"\r"))
    assert not MailPieces([b"\xff\r\n"]).isascii()


def test_a_forward_of_a_large_attachment_is_composed_in_pieces() -> None:
    content = os.urandom(4 * JOIN_BELOW)
    exchange = Exchange(body=b"see attached", headers=Headers([("Subject", "big")]))
    exchange.attachments.append(Attachment("big.bin", "application/octet-stream", content))
    mail = composer('from "a@example.com"\nto "b@example.com"\nattachments from-message')
    mail = mail.compose(exchange)
    assert len(mail.message) > len(content)
    assert max(len(c) for c in mail.message.chunks()) < len(content) // 3
    parsed = email.message_from_bytes(mail.data, policy=email.policy.default)
    (part,) = parsed.iter_attachments()
    assert part.get_content() == content
