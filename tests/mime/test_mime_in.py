"""mail_to_exchange: sample mails from tests/data/mime in, exchanges out."""

from __future__ import annotations

import base64
import os
import random
import struct
import zlib
from pathlib import Path

import pytest

from flowrt.adapters.mail.mime.read import (
    DEFECTS_PROPERTY,
    ORIGINAL_PROPERTY,
    decode_words,
    mail_to_exchange,
)
from flowrt.errors import MessageFormatException, ProcessingError, is_retryable
from tests.mime.conftest import DATA, sample


def defects(exchange: object) -> list[str]:
    return list(getattr(exchange, "properties", {}).get(DEFECTS_PROPERTY, []))


# ----------------------------------------------------------------------------- bodies


def test_plain_text_mail() -> None:
    ex = mail_to_exchange(sample("plain.eml"))
    assert ex.content_type == "text/plain"
    assert ex.charset == "us-ascii"
    assert ex.text.startswith("Hello Bob,\n\nplease find the invoice")
    assert ex.headers.get("From") == "Alice Example <alice@example.com>"
    assert ex.headers.get("To") == "Bob <bob@example.org>, carol@example.org"
    assert ex.headers.get("Cc") == "dave@example.org"
    assert ex.headers.get("Reply-To") == "invoices@example.com"
    assert ex.headers.get("Sender") == "mailer@example.com"
    assert ex.headers.get("Date") == "Mon, 3 Jun 2024 09:15:00 +0200"
    assert ex.attachments == []
    assert defects(ex) == []
    assert DEFECTS_PROPERTY not in ex.properties


def test_folded_header_is_unfolded() -> None:
    ex = mail_to_exchange(sample("plain.eml"))
    assert ex.headers.get("Subject") == "Invoice 2024-0042 for June"


def test_crlf_mail_reads_like_lf_mail() -> None:
    lf = mail_to_exchange(sample("pdf_attachment.eml"))
    crlf = mail_to_exchange(sample("pdf_attachment.eml").replace(b"\n", b"\r\n"))
    assert crlf.headers == lf.headers
    assert crlf.attachments[0].data == lf.attachments[0].data
    assert crlf.text.replace("\r\n", "\n") == lf.text


def test_message_ids() -> None:
    ex = mail_to_exchange(sample("plain.eml"))
    assert ex.correlation_id == "20240603091500.4242@example.com"
    assert ex.message_id and ex.message_id != ex.correlation_id
    assert mail_to_exchange(sample("plain.eml")).message_id != ex.message_id


def test_correlation_id_without_message_id_is_the_message_id() -> None:
    ex = mail_to_exchange(b"From: a@example.com\nDate: Mon, 3 Jun 2024 09:00:00 +0200\n\nhi\n")
    assert ex.correlation_id == ex.message_id


def test_alternative_prefers_text_plain() -> None:
    ex = mail_to_exchange(sample("alternative.eml"))
    assert ex.content_type == "text/plain"
    assert ex.charset == "utf-8"
    assert ex.text == "The plain version: Grüße.\n"
    assert ex.attachments == []  # the HTML alternative is not an attachment


def test_html_only_mail() -> None:
    ex = mail_to_exchange(sample("html_only.eml"))
    assert ex.content_type == "text/html"
    assert ex.charset == "utf-8"
    assert ex.text.startswith("<html><body><p>Grüße, your order")


def test_iso_8859_1_body_keeps_its_bytes() -> None:
    ex = mail_to_exchange(sample("latin1.eml"))
    assert ex.charset == "iso-8859-1"
    assert ex.body == "Grüße aus Köln, schöne Grüße!\n".encode("iso-8859-1")
    assert ex.text == "Grüße aus Köln, schöne Grüße!\n"
    assert ex.headers.get("From") == "Jörg Müller <joerg@example.de>"


def test_windows_1252_body_8bit() -> None:
    ex = mail_to_exchange(sample("windows1252.eml"))
    assert ex.charset == "windows-1252"
    assert b"\x80" in ex.body  # the euro sign, as windows-1252 writes it
    assert ex.text == "Betrag: 100 € – „zahlbar“ sofort.\n"
    assert defects(ex) == []


def test_8bit_body_without_charset_is_read_as_windows_1252() -> None:
    raw = b"From: a@example.com\nDate: Mon, 3 Jun 2024 09:00:00 +0200\n\nK\xf6ln\n"
    ex = mail_to_exchange(raw)
    assert ex.charset == "windows-1252"
    assert ex.text == "Köln\n"
    assert defects(ex) == ["the mail: 8-bit text without a charset; read as windows-1252"]


# ----------------------------------------------------------------------------- headers


def test_rfc2047_q_subject() -> None:
    ex = mail_to_exchange(sample("subject_q.eml"))
    assert ex.headers.get("Subject") == "Grüße aus Köln"


def test_rfc2047_b_subject_split_over_two_folded_words() -> None:
    ex = mail_to_exchange(sample("subject_b.eml"))
    assert ex.headers.get("Subject") == "Grüße aus Köln (2024)"
    assert ex.headers.get("From") == "Jörg <joerg@example.de>"


def test_broken_encoded_words_are_kept_as_written() -> None:
    ex = mail_to_exchange(sample("subject_broken.eml"))
    assert ex.headers.get("Subject") == (
        "Report =?utf-8?B?####?= and =?x-klingon?Q?nuqneH?= for Köln"
    )
    assert defects(ex) == [
        "header Subject: broken encoded word '=?utf-8?B?####?='; kept as written",
        "header Subject: unknown charset 'x-klingon' in '=?x-klingon?Q?nuqneH?='; kept as written",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # white space between words goes
        ("=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),  # other text stays
        ("=?UTF-8?B?w7w=?=", "ü"),
        ("=?utf-8?b?w7w?=", "ü"),  # missing padding is tolerated
        ("=?utf-8?B?w6?= =?utf-8?B?xI=?=", "\ufffd\ufffd"),  # split bytes that do not join
        ("=?utf-8?B?4oK=?= =?utf-8?B?rA==?=", "€"),  # a character split over two words
        ("=?iso-8859-1*de?q?Gr=FC=DFe?=", "Grüße"),  # RFC 2231 language tag
    ],
)
def test_decode_words(value: str, text: str) -> None:
    assert decode_words(value)[0] == text


def test_repeated_headers_are_kept_in_order() -> None:
    ex = mail_to_exchange(sample("plain.eml"))
    received = ex.headers.get_all("Received")
    assert len(received) == 2
    assert received[0].startswith("from mx2.example.net (mx2.example.net [192.0.2.2])")
    assert "\n" not in received[0] and "by mx1.example.org" in received[0]
    assert ex.headers.get_all("X-Custom") == ["first", "second"]
    names = [name for name, _ in ex.headers.items()]
    assert names[:3] == ["Return-Path", "Received", "Received"]


def test_header_narrowing_is_case_insensitive() -> None:
    ex = mail_to_exchange(sample("plain.eml"), headers=["subject", "FROM", "Received"])
    assert [name for name, _ in ex.headers.items()] == ["Received", "Received", "From", "Subject"]
    # The correlation ID comes from the mail even when Message-ID is not kept.
    assert ex.correlation_id == "20240603091500.4242@example.com"


def test_raw_utf8_header_bytes() -> None:
    raw = "From: Jörg <j@example.de>\nSubject: Grüße\nDate: x\n\nbody\n".encode()
    ex = mail_to_exchange(raw)
    assert ex.headers.get("Subject") == "Grüße"
    assert ex.headers.get("From") == "Jörg <j@example.de>"


# ----------------------------------------------------------------------------- attachments


def test_pdf_attachment() -> None:
    ex = mail_to_exchange(sample("pdf_attachment.eml"))
    assert ex.text == "The invoice is attached.\n"
    (pdf,) = ex.attachments
    assert pdf.name == "invoice-2024-0042.pdf"
    assert pdf.content_type == "application/pdf"
    assert pdf.data.startswith(b"%PDF-1.4\n") and pdf.data.endswith(b"%%EOF\n")


def test_attachments_drop() -> None:
    ex = mail_to_exchange(sample("pdf_attachment.eml"), attachments="drop")
    assert ex.attachments == []
    assert ex.text == "The invoice is attached.\n"


def test_same_names_get_a_suffix_and_paths_are_removed() -> None:
    ex = mail_to_exchange(sample("duplicate_names.eml"))
    assert [a.name for a in ex.attachments] == ["report.pdf", "report-1.pdf", "REPORT-2.PDF"]
    assert ex.attachments[0].data == b"%PDF-1.4\nfirst\n"
    assert ex.attachments[1].data == b"%PDF-1.4\nsecond\n"
    assert ex.attachments[2].content_type == "text/plain"


def test_unnamed_attachments_get_generated_names() -> None:
    ex = mail_to_exchange(sample("unnamed_attachment.eml"))
    assert [(a.name, a.content_type) for a in ex.attachments] == [
        ("attachment-1.pdf", "application/pdf"),
        ("attachment-2.png", "image/png"),  # an inline image is an attachment too
    ]
    assert ex.attachments[1].data == b"\x89PNG\r\n\x1a\n"


def test_rfc2231_and_rfc2047_file_names() -> None:
    ex = mail_to_exchange(sample("rfc2231_filename.eml"))
    assert [a.name for a in ex.attachments] == [
        "Grüße aus Köln.pdf",  # filename*=utf-8''...
        "Straßenliste.csv",  # filename*0*=iso-8859-1''... continued in filename*1
        "Prüfbericht.pdf",  # "=?utf-8?B?...?=" in a quoted string, as Outlook writes it
    ]
    assert defects(ex) == []


def test_nested_messages_become_eml_attachments() -> None:
    raw = sample("nested_message.eml")
    ex = mail_to_exchange(raw)
    assert ex.text == "Two forwarded mails."
    assert [(a.name, a.content_type) for a in ex.attachments] == [
        ("Bestellung für Juni.eml", "message/rfc822"),
        ("message-1.eml", "message/rfc822"),
    ]
    inner = ex.attachments[0].data
    assert inner.startswith(b"From: carol@example.org\n")
    assert inner in raw  # written back exactly as it was in the mail
    # ...and it reads as a mail of its own, with its own attachment inside.
    again = mail_to_exchange(inner)
    assert again.headers.get("Subject") == "Bestellung für Juni"
    assert [(a.name, a.data) for a in again.attachments] == [("order.pdf", b"%PDF-1.4\n")]


def test_message_rfc822_as_the_whole_body_part() -> None:
    raw = (
        b"From: a@example.com\nDate: Mon, 3 Jun 2024 09:00:00 +0200\n"
        b"Content-Type: message/rfc822\n\nSubject: a/b: c?\n\ninner body\n"
    )
    ex = mail_to_exchange(raw)
    assert ex.body == b""
    assert [a.name for a in ex.attachments] == ["a_b_ c_.eml"]


# ----------------------------------------------------------------------------- broken mail


def test_missing_closing_boundary() -> None:
    ex = mail_to_exchange(sample("missing_close_boundary.eml"))
    assert ex.text == "The body is here."
    assert [a.name for a in ex.attachments] == ["a.pdf"]
    assert ex.attachments[0].data == b"%PDF-1.4\n"
    assert defects(ex) == [
        "the mail: the multipart has no closing boundary (truncated mail?); "
        "the parts found were kept"
    ]


def test_unknown_charset_keeps_the_bytes() -> None:
    ex = mail_to_exchange(sample("unknown_charset.eml"))
    assert ex.body == "Café au lait.\n".encode()
    assert ex.charset == "utf-8"
    assert ex.text == "Café au lait.\n"
    assert defects(ex) == ["the mail: unknown charset 'x-unknown'; the text is read as utf-8"]


def test_undecodable_base64_is_recovered() -> None:
    ex = mail_to_exchange(sample("bad_base64.eml"))
    assert ex.text == "Hello world"
    assert ex.attachments[0].data == bytes(range(10))
    assert defects(ex) == [
        "part 1 (text/plain): base64 content with characters outside base64; they were skipped",
        "part 1 (text/plain): base64 content with bad padding",
        "part 2 (application/octet-stream): base64 content with bad padding",
    ]


def test_no_headers_but_a_body() -> None:
    raw = sample("no_headers.eml")
    ex = mail_to_exchange(raw)
    assert ex.body == raw
    assert len(ex.headers) == 0
    assert defects(ex) == ["no header lines: the whole input was taken as the body"]


def test_truncated_mail() -> None:
    ex = mail_to_exchange(sample("truncated.eml"))
    assert ex.text == "The attachment below is cut off."
    (pdf,) = ex.attachments
    assert pdf.name == "big.pdf"
    assert pdf.data.startswith(b"%PDF-1.4\n1 0 obj") and pdf.data.endswith(b"/Root 1 0 ")
    assert defects(ex) == [
        "part 2 (application/pdf): base64 content that is cut short; "
        "the last incomplete bytes were lost",
        "the mail: the multipart has no closing boundary (truncated mail?); "
        "the parts found were kept",
    ]


def test_wrong_boundary_is_found_and_missing_headers_reported() -> None:
    ex = mail_to_exchange(sample("wrong_boundary.eml"))
    assert ex.text == "The body."
    assert [a.name for a in ex.attachments] == ["x.pdf"]
    assert defects(ex) == [
        "no From header",
        "no Date header",
        "the mail: the declared boundary is not used; the parts were found by the one that is",
    ]


def test_unknown_transfer_encoding() -> None:
    raw = (
        b"From: a@example.com\nDate: Mon, 3 Jun 2024 09:00:00 +0200\n"
        b"Content-Transfer-Encoding: x-rot13\n\nuryyb\n"
    )
    ex = mail_to_exchange(raw)
    assert ex.body == b"uryyb\n"
    assert defects(ex) == ["the mail: unknown transfer encoding 'x-rot13'; content kept as is"]


def test_header_with_bytes_that_are_not_utf8() -> None:
    raw = b"From: a@example.com\nDate: x\nSubject: K\xf6ln\n\nbody\n"
    ex = mail_to_exchange(raw)
    assert ex.headers.get("Subject") == "Köln"
    assert defects(ex) == ["the mail: header Subject has 8-bit bytes that are not UTF-8"]


def test_leading_blank_lines_are_skipped() -> None:
    ex = mail_to_exchange(b"\r\n\r\n" + sample("plain.eml"))
    assert ex.headers.get("Subject") == "Invoice 2024-0042 for June"
    assert defects(ex) == ["blank lines before the header block were skipped"]


# ----------------------------------------------------------------------------- not a mail


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not a mail: the input is empty"),
        (b" \r\n\r\n\t", "not a mail: the input is only white space"),
        (
            _png(),
            "not a mail: no header lines found in the first 64 KiB; the data looks like a PNG",
        ),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "the data looks like a PDF document"),
        # seeded: random bytes can start like a header line ("a:..."), which is a mail
        (random.Random(20261206).randbytes(4096) + b"\x00", "the data looks like binary data"),
    ],
)
def test_not_a_mail(raw: bytes, message: str) -> None:
    with pytest.raises(MessageFormatException, match=message.replace("(", r"\(")) as caught:
        mail_to_exchange(raw)
    assert isinstance(caught.value, ProcessingError)
    assert not is_retryable(caught.value)


# ----------------------------------------------------------------------------- options


def test_keep_original() -> None:
    raw = sample("pdf_attachment.eml")
    ex = mail_to_exchange(raw, keep_original=True)
    assert ex.properties[ORIGINAL_PROPERTY] is raw  # the bytes as read, not a copy
    assert ORIGINAL_PROPERTY not in mail_to_exchange(raw).properties


def test_large_attachment() -> None:
    data = os.urandom(3 * 1024 * 1024)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    raw = (
        b"From: a@example.com\r\nDate: Mon, 3 Jun 2024 09:00:00 +0200\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nbig\r\n--b\r\n'
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--b--\r\n"
    )
    ex = mail_to_exchange(raw)
    assert [a.name for a in ex.attachments] == ["attachment-1.bin"]
    assert ex.attachments[0].data == data
    assert defects(ex) == []


# ----------------------------------------------------------------------------- robustness


def test_deeply_nested_multiparts_do_not_crash() -> None:
    def nested(levels: int) -> bytes:
        opening = b"".join(
            b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i)
            for i in range(levels)
        )
        closing = b"".join(b"--b%d--\n" % i for i in reversed(range(levels)))
        head = b"From: a@example.com\nDate: Mon, 3 Jun 2024 09:00:00 +0200\n"
        return head + opening + b"Content-Type: text/plain\n\ndeep\n" + closing

    assert mail_to_exchange(nested(10)).text == "deep"
    too_deep = mail_to_exchange(nested(3000))  # beyond what the stdlib parser can recurse
    assert too_deep.headers.get("From") == "a@example.com"
    assert defects(too_deep) == ["parts nested too deeply to read; the rest was kept as raw text"]
    assert "parts nested too deeply" in defects(mail_to_exchange(nested(80)))[0]


_SNIPPETS = [b"=?", b"?=", b"\n", b"\r\n", b"--", b";", b'"', b"=?utf-8?b?", b"*0*=", b"'"]
_SNIPPETS += [b"%", b"\x00", b":", b" ", b"boundary=", b"message/rfc822", b"\xff\xfe"]


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 8)):
        position = rng.randrange(len(data) + 1)
        action = rng.randrange(4)
        if action == 0:
            del data[position:]
        elif action == 1 and position < len(data):
            data[position] = rng.randrange(256)
        elif action == 2:
            data[position:position] = rng.choice(_SNIPPETS)
        else:
            del data[position : position + rng.randrange(1, 200)]
    return bytes(data)


def test_mangled_mails_never_raise_anything_but_message_format_exception() -> None:
    rng = random.Random(20240603)  # fixed: a failure here can be replayed
    samples = [path.read_bytes() for path in sorted(Path(DATA).glob("*.eml"))]
    for _ in range(1500):
        raw = _mutate(rng, rng.choice(samples))
        try:
            exchange = mail_to_exchange(raw)
        except MessageFormatException:
            continue
        assert isinstance(exchange.text, str)
        assert all(isinstance(d, str) for d in defects(exchange))
