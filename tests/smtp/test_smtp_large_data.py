"""A large message goes to the server in pieces (flowrt.adapters.mail.smtp.data): the same
bytes on the wire as aiosmtplib's one-block DATA, the same errors when the server refuses
or drops it."""

from __future__ import annotations

import email
import email.policy
import os

import aiosmtplib
import pytest
from aiosmtplib.protocol import PERIOD_REGEX

from flowrt.adapters.mail.smtp.data import STREAM_ABOVE, end_line, streams, wire_pieces
from flowrt.engine.exchange import Attachment, Exchange, Headers
from flowrt.errors import MailConnectException, SendFailedException, is_retryable
from tests.smtp.conftest import TestTenant, drop_once_server
from tests.smtp.test_smtp_faults import Start, receiver_for, scripted

# every scripted server twice, as in the fault tests: without PIPELINING, the message goes
# through smtp.data; with it, through the pipelined group's own writer (smtp.pipelining)
__all__ = ["scripted"]

TRICKY = [
    b"",
    b"no line break at the end",
    b".a dot first\r\n..two\r\n.\r\nlast\r\n",
    b"bare\nline\nfeeds\n.dot after LF\n",
    b"lone\rcarriage\rreturns\r.dot after CR\r",
    b"mixed\r\n\n\r\r\n.\n\r.\r\n",
    b"x" * 40 + b"\n" + b"." * 30 + b"\r\n",
]


def aiosmtplib_wire(message: bytes) -> bytes:
    """What ``SMTP.data`` writes for ``message`` (its own steps)."""
    from aiosmtplib.protocol import normalize_message_line_endings

    wire: bytes = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))
    return wire + b".\r\n"


@pytest.mark.parametrize("message", TRICKY)
@pytest.mark.parametrize("size", [1, 3, 7, 64, 1 << 20])
def test_pieces_are_the_wire_form_aiosmtplib_writes(message: bytes, size: int) -> None:
    pieces = list(wire_pieces(message, size))
    joined = b"".join(pieces) + end_line(message)
    if message.endswith((b"\n", b"\r")) or not message:
        assert joined == aiosmtplib_wire(message)
    else:  # aiosmtplib would glue the end line to the last line; a line break comes first
        assert joined == aiosmtplib_wire(message + b"\r\n")
    assert all(len(p) < size + 200 or b"\n" not in p[size:-1] for p in pieces)


async def test_the_installed_aiosmtplib_takes_a_message_in_pieces(scripted: Start) -> None:
    server = scripted()
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=False)
    assert not streams(smtp)  # not connected: SMTP.data says so
    await smtp.connect()
    try:
        assert streams(smtp)
    finally:
        await smtp.quit()


BLOB = os.urandom(STREAM_ABOVE * 2)
TEXT = b"".join(b".line %d starts with a dot\n" % n for n in range(2000))


def big(subject: str = "big") -> Exchange:
    return Exchange(
        body=TEXT,
        headers=Headers([("Subject", subject)]),
        attachments=[Attachment("blob.bin", "application/octet-stream", BLOB)],
    )


async def test_a_large_message_arrives_as_composed(tenant: TestTenant, scripted: Start) -> None:
    server = scripted()
    async with receiver_for(tenant, server.port, timeout="30s", attachments="from-message") as smtp:
        await smtp.deliver(big())
    (received,) = server.wait_for_messages(1)
    assert len(received.data) > STREAM_ABOVE
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().encode().replace(b"\r\n", b"\n") == TEXT
    (attachment,) = message.iter_attachments()
    assert attachment.get_content() == BLOB


async def test_a_large_message_refused_or_dropped_fails_as_before(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(data_reply="452 4.3.1 Insufficient system storage")
    async with receiver_for(tenant, server.port, timeout="30s", attachments="from-message") as smtp:
        with pytest.raises(SendFailedException) as info:
            await smtp.deliver(big())
    assert info.value.message.startswith("452 4.3.1") and is_retryable(info.value)

    server = scripted(drop_once_server())
    async with receiver_for(tenant, server.port, timeout="30s", attachments="from-message") as smtp:
        report = await smtp.deliver(big("dropped once"))
    assert report.attempts == 2 and server.connections == 2

    server = scripted(drop_during_data=True)
    async with receiver_for(tenant, server.port, timeout="30s", attachments="from-message") as smtp:
        with pytest.raises(MailConnectException):
            await smtp.deliver(big())
