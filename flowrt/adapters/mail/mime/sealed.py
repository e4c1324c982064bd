"""Structures a forward must not rebuild: a signed mail (the signature covers the bytes of
the signed part), a report (its parts mean something in their order), an encrypted mail.

:func:`seal` cuts such a mail's entity out of the raw bytes (its Content-* header lines and
its body, CRLF line endings) so that a receiver that forwards the message unchanged writes
it as it came; the composer decides whether it is unchanged (see ``Sealed.unchanged``).
"""

from __future__ import annotations

import re
from email.message import Message

from flowrt.engine.exchange import Exchange, Sealed

__all__ = ["SEALED_TYPES", "seal"]

SEALED_TYPES = frozenset(
    (
        "multipart/signed",
        "multipart/report",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    )
)
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"^(?=[^ \t\r\n])", re.MULTILINE)
_NEWLINE = re.compile(rb"\r\n|\r|\n")


def seal(raw: bytes, start: int, root: Message, exchange: Exchange) -> Sealed | None:
    """The sealed entity of a mail whose top level is one of :data:`SEALED_TYPES` and was
    read without trouble, else None."""
    content_type = root.get_content_type()
    if content_type not in SEALED_TYPES or root.defects:
        return None
    if content_type.startswith("multipart/") and not root.is_multipart():
        return None  # its boundary was lost: what we read is not what it says it is
    end = _END_OF_HEADERS.search(raw, start)
    if end is None:
        return None
    fields = _FIELD_START.split(raw[start : end.start()])
    content = [f.rstrip(b"\r\n") for f in fields if f[:8].lower() == b"content-"]
    if not any(f[:13].lower() == b"content-type:" for f in content):
        return None
    head = b"\r\n".join(_NEWLINE.sub(b"\r\n", f) for f in content) + b"\r\n\r\n"
    body = raw[end.end() :]
    # SMTP carries CRLF, and a signature is computed over CRLF lines (RFC 8551 3.1.1)
    body = body.replace(b"\n", b"\r\n") if b"\r" not in body else _NEWLINE.sub(b"\r\n", body)
    return Sealed(
        content_type=content_type,
        entity=head + body,
        body=exchange.body,
        html=exchange.html,
        attachments=tuple(exchange.attachments),
        related=tuple(exchange.related),
    )
