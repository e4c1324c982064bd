"""Large bodies are read from the raw bytes, not through the ``email`` parser
(mime/skeleton.py): every mail of the test data reads the same with every body cut out as
with none, and mails that are not built plainly are not cut at all."""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from flowrt.adapters.mail.mime import skeleton as cutting
from flowrt.adapters.mail.mime.read import mail_to_exchange
from flowrt.adapters.mail.mime.skeleton import skeleton
from flowrt.engine.exchange import Exchange

DATA = Path(__file__).resolve().parent.parent / "data"
MAILS = sorted(
    [*DATA.glob("mails/*.eml"), *DATA.glob("mime/*.eml"), *DATA.glob("mime/corpus/*.eml")]
)


def seen(exchange: Exchange) -> dict[str, Any]:
    fields = dataclasses.asdict(exchange)
    if exchange.correlation_id == exchange.message_id:  # no Message-ID: a new one each time
        fields.pop("correlation_id")
    for moving in ("message_id", "created"):
        fields.pop(moving)
    return fields


@pytest.mark.parametrize("path", MAILS, ids=[f"{p.parent.name}/{p.name}" for p in MAILS])
def test_a_mail_reads_the_same_with_every_body_cut_out(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = path.read_bytes()
    whole = seen(mail_to_exchange(raw))
    monkeypatch.setattr(cutting, "CUT_ABOVE", 0)
    assert seen(mail_to_exchange(raw)) == whole


def big_mail(payload: bytes, *, cte: str = "base64", closing: bool = True) -> bytes:
    encoded = base64.encodebytes(payload) if cte == "base64" else payload
    return (
        b"From: a@example.com\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\nSubject: big\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
        b'Content-Type: application/octet-stream; name="x.bin"\r\n'
        b"Content-Transfer-Encoding: "
        + cte.encode()
        + b"\r\n\r\n"
        + encoded.replace(b"\n", b"\r\n")
        + (b"--b--\r\n" if closing else b"")
    )


def test_a_large_attachment_is_cut_out_and_read_whole() -> None:
    payload = os.urandom(400_000)
    raw = big_mail(payload)
    cut = skeleton(raw, 0)
    assert cut is not None and len(cut.data) < 1000
    exchange = mail_to_exchange(raw)
    assert [a.data for a in exchange.attachments] == [payload]
    assert exchange.text == "see attached"
    assert "mail.defects" not in exchange.properties


@pytest.mark.parametrize(
    "raw",
    [
        big_mail(os.urandom(400_000), closing=False),  # truncated: the parser recovers
        big_mail(os.urandom(400_000)).replace(b'boundary="b"', b'boundary="c"'),
        big_mail(b"x" * 400_000, cte="x-unknown"),
    ],
    ids=["no-closing-delimiter", "wrong-boundary", "unknown-encoding"],
)
def test_an_unusual_mail_is_not_cut(raw: bytes) -> None:
    assert skeleton(raw, 0) is None


def test_bad_base64_in_a_cut_body_is_recovered_and_named() -> None:
    raw = big_mail(os.urandom(400_000)).replace(b"--b--", b"!!!\r\n--b--")
    assert skeleton(raw, 0) is not None
    exchange = mail_to_exchange(raw)
    assert any("outside base64" in d for d in exchange.properties["mail.defects"])
    assert len(exchange.attachments[0].data) >= 400_000
