"""The wire writer: MIME pieces as bytes, exactly as the stdlib ``email`` package writes them.

:mod:`~flowrt.adapters.mail.mime.compose` decides what a mail holds (the composition policy);
this module only writes pieces of it: header lines, part heads, payloads in their transfer
encoding, boundaries. The fast functions write the common shapes directly and fall back to the
package for anything else; ``tests/mime/test_mime_out_fast.py`` compares both ways.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Iterator
from email.generator import BytesGenerator
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP, Policy
from io import BytesIO

__all__ = [
    "FOLD_AT",
    "MAX_LINE",
    "NLCRE",
    "PARAM_VALUE",
    "PLAIN_VALUE",
    "QP_PLAIN",
    "EncodedHeader",
    "base64_crlf",
    "choose_encoding",
    "embeddable",
    "encode_payload",
    "encoded_line",
    "folded",
    "head_bytes",
    "lines_crlf",
    "longest_line",
    "max_count",
    "normalize_newlines",
    "parts_boundary",
    "payload_text",
    "pick_boundary",
    "plain_line",
    "serialize",
    "simple_part_head",
    "transfer_encode",
    "write_base64_crlf",
]

MAX_LINE = 998  # RFC 5322 2.1.1 / RFC 2045 2.7: the longest line 7bit and 8bit may carry
# Bytes quoted-printable writes as they are: printable ASCII (except '='), tab, line feed.
QP_PLAIN = bytes([0x09, 0x0A, *range(0x20, 0x3D), *range(0x3E, 0x7F)])
FOLD_AT: int = SMTP.max_line_length or 78  # a header line up to this long is written as it is
PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces
PARAM_VALUE = re.compile(r"[!#-\[\]-~]+(?: [!#-\[\]-~]+)*")  # the same without " and \
# The line breaks the generator writes as CRLF (email.generator.NLCRE, on bytes)
NLCRE = re.compile(rb"\r\n|\r|\n")


def embeddable(mail: bytes) -> bytes | None:
    """A nested mail with CRLF line endings, or None when 7bit cannot carry it: then it goes
    base64, which every common client reads anyway. (8bit would do for 8-bit text, but the
    stdlib generator writes message/* payloads as ASCII only.)"""
    data = re.sub(rb"\r?\n", b"\r\n", mail)
    fits = data.isascii() and b"\0" not in data and longest_line(data) <= MAX_LINE
    return data if fits else None


def normalize_newlines(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if not text or text.endswith("\n") else text + "\n"


def longest_line(data: bytes) -> int:
    return max(map(len, data.split(b"\n")), default=0)


def choose_encoding(data: bytes) -> str:
    """auto: 7bit for ASCII with lines within the limit; quoted-printable for text that is
    mostly ASCII (stays readable; at most a third of the bytes escaped), else base64."""
    if data.isascii() and longest_line(data) <= MAX_LINE and b"\0" not in data:
        return "7bit"
    escaped = len(data.translate(None, QP_PLAIN))
    return "quoted-printable" if escaped * 3 <= len(data) else "base64"


def transfer_encode(data: bytes, cte: str) -> str:
    """The body as the payload string the generator writes ("\\n" becomes CRLF)."""
    return encode_payload(data, cte).decode("ascii", "surrogateescape")


def encode_payload(data: bytes, cte: str) -> bytes:
    """The body in its transfer encoding, line breaks as they are."""
    if cte == "base64":  # text is base64-encoded in its canonical form, with CRLF
        return base64.encodebytes(data.replace(b"\n", b"\r\n"))
    if cte == "quoted-printable":
        return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return data  # 7bit, 8bit: the bytes as they are


def parts_boundary(message_id: str, parts: list[EmailMessage]) -> str:
    """The boundary of a multipart entity of ``parts`` (see :func:`pick_boundary`)."""
    texts = [
        str(p.get_payload())
        for p in parts
        if p.get("Content-Transfer-Encoding") not in ("base64", "quoted-printable")
    ]
    return pick_boundary(message_id, texts)


def pick_boundary(message_id: str, texts: list[str]) -> str:
    """A boundary derived from the Message-ID (unique per mail, fixed when a test fixes the
    ID). '=_' occurs neither in base64 nor in quoted-printable; ``texts``, the parts in other
    encodings, are checked."""
    boundary = "=_flowrt_" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
    while any(boundary in text for text in texts):
        boundary += "_"
    return boundary


def serialize(entity: EmailMessage) -> bytes:
    buffer = BytesIO()
    BytesGenerator(buffer, policy=SMTP).flatten(entity)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- fast pieces
# Each writes what the email package writes for one piece, for the shapes it recognises.


def plain_line(name: str, value: str) -> bytes | None:
    """``Name: value`` CRLF, as the SMTP policy writes a header that fits on one line and
    holds printable ASCII words only (so nothing is encoded or refolded), or None."""
    if len(name) + 2 + len(value) <= FOLD_AT and "=?" not in value and PLAIN_VALUE.fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return None


def folded(name: str, value: object) -> bytes:
    """One header as an ``EmailMessage`` stores it (``msg[name] = value``) and the SMTP
    policy writes it."""
    return SMTP.fold_binary(*SMTP.header_store_parse(name, value))


def encoded_line(name: str, value: str, charset: str) -> bytes:
    """A header encoded in the receiver's charset (see :class:`EncodedHeader`)."""
    return plain_line(name, value) or folded(name, EncodedHeader(name, value, charset))


@functools.cache
def max_count(lower_name: str) -> int | None:
    """How often the policy lets a message hold this header (None: any number)."""
    limit: int | None = SMTP.header_max_count(lower_name)
    return limit


def head_bytes(part: EmailMessage) -> bytes:
    """A part's headers and the blank line after them, as ``BytesGenerator`` writes them."""
    return b"".join(SMTP.fold_binary(name, value) for name, value in part.raw_items()) + b"\r\n"


def simple_part_head(
    content_type: str, charset: str | None, name: str, embedded: bool
) -> bytes | None:
    """An attachment part's headers (see ``MailComposer._attachment_mime``) when each fits
    on a line and the name needs no quoting or encoding, else None."""
    value = content_type if charset is None else f'{content_type}; charset="{charset}"'
    disposition = "attachment"
    if name:
        if "=?" in name or not PARAM_VALUE.fullmatch(name):
            return None
        value += f'; name="{name}"'
        disposition += f'; filename="{name}"'
    first = plain_line("Content-Type", value)
    second = plain_line("Content-Disposition", disposition)
    if first is None or second is None:
        return None
    cte = b"7bit" if embedded else b"base64"
    return first + second + b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n"


def lines_crlf(data: bytes) -> bytes:
    """A payload with its line breaks as the generator writes them: CRLF."""
    return data.replace(b"\n", b"\r\n") if b"\r" not in data else NLCRE.sub(b"\r\n", data)


def base64_crlf(data: bytes) -> bytes:
    out = BytesIO()
    write_base64_crlf(data, out)
    return out.getvalue()


_BASE64_STEP = 57 * 16384  # whole 76-character lines: the pieces end where the lines do


def write_base64_crlf(data: bytes, out: BytesIO) -> None:
    """``data`` in base64, 76-character lines ending in CRLF, written to ``out`` a piece at
    a time: no whole-size copy of the encoded text besides ``out``."""
    for step in base64_crlf_steps(data):
        out.write(step)


def base64_crlf_steps(data: bytes) -> Iterator[bytes]:
    """``data`` in base64 (76-character lines ending in CRLF), a step of whole lines at a
    time."""
    view = memoryview(data)
    for at in range(0, len(data), _BASE64_STEP):
        yield base64.encodebytes(view[at : at + _BASE64_STEP]).replace(b"\n", b"\r\n")


def base64_crlf_size(size: int) -> int:
    """How many bytes :func:`base64_crlf_steps` writes for ``size`` bytes."""
    encoded = -(-size // 3) * 4
    return encoded + 2 * -(-encoded // 76)


def payload_text(data: bytes, charset: str) -> str:
    """What ``get_payload()`` gives for a 7bit or 8bit body part: its text, read in the
    part's charset when it has 8-bit bytes."""
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("ascii", "replace")


class EncodedHeader:
    """A header that is RFC 2047-encoded in the receiver's charset (the policy would use
    UTF-8). The email policy writes any value that has a ``name`` as its ``fold`` returns."""

    def __init__(self, name: str, value: str, charset: str) -> None:
        self.name = name
        if value.isascii():
            charset = "us-ascii"
        else:
            try:
                value.encode(charset)
            except UnicodeEncodeError:
                charset = "utf-8"  # an encoded word names its charset: UTF-8 is always safe
        self._header = Header(value, charset, header_name=name)

    def fold(self, *, policy: Policy) -> str:
        encoded = self._header.encode(linesep=policy.linesep)
        return f"{self.name}: {encoded}{policy.linesep}"

    def __str__(self) -> str:
        return str(self._header)
