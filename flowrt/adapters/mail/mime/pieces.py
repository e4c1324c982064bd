"""A composed mail as pieces, for the SMTP writer to take a part at a time.

A large attachment is 34 MB of base64 in a mail: joined into one bytes object, the composed
mail was a third copy of the attachment alive next to the raw mail and the decoded content
while it was sent. :class:`MailPieces` keeps the header and part bytes as they are and each
attachment's content unencoded (:class:`Base64`); :meth:`MailPieces.chunks` encodes a step
at a time as DATA is written, so no whole composed copy exists. A small mail is joined at
once (one bytes object, as before): a copy of it costs nothing worth the pieces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from io import BytesIO

from flowrt.adapters.mail.mime.wire import base64_crlf_size, base64_crlf_steps
from flowrt.engine.exchange import LazyContent

__all__ = ["JOIN_BELOW", "Base64", "MailPieces", "join_pieces"]

JOIN_BELOW = 1024 * 1024  # a smaller mail is one bytes object
_LINE = 57  # content bytes per base64 line


class Base64:
    """An attachment's content, written in base64 (76-character lines, CRLF) only when the
    mail is: a 25 MB attachment is 34 MB of base64, which is never whole. Content still in
    the mail that was read (:class:`~.lazy.LazyBase64`) is decoded a step at a time too."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | LazyContent) -> None:
        self.data = data

    def __len__(self) -> int:
        data = self.data
        return base64_crlf_size(len(data) if isinstance(data, bytes) else data.size)

    def steps(self) -> Iterator[bytes]:
        data = self.data
        if isinstance(data, bytes):
            return base64_crlf_steps(data)
        return _encoded_steps(data.steps())


def _encoded_steps(decoded: Iterable[bytes]) -> Iterator[bytes]:
    """Pieces of content in base64, its lines whole across the pieces' edges."""
    carry = b""
    for piece in decoded:
        data = carry + piece if carry else piece
        whole = len(data) - len(data) % _LINE
        carry = data[whole:]
        if whole:
            yield from base64_crlf_steps(data[:whole] if carry else data)
    if carry:
        yield from base64_crlf_steps(carry)


def join_pieces(pieces: list[bytes | Base64]) -> bytes:
    """The pieces as one bytes object, each base64 content encoded straight into it."""
    out = BytesIO()
    for piece in pieces:
        if isinstance(piece, bytes):
            out.write(piece)
        else:
            for step in piece.steps():
                out.write(step)
    return out.getvalue()


class MailPieces:
    """A composed mail's bytes: ``bytes(m)`` joins them (a copy), ``chunks()`` gives them a
    step at a time, ``len(m)`` is their size without joining."""

    __slots__ = ("_pieces", "_size")

    def __init__(self, pieces: list[bytes | Base64]) -> None:
        size = sum(len(p) for p in pieces)
        if size < JOIN_BELOW and len(pieces) != 1:
            pieces = [join_pieces(pieces)]
        self._pieces = pieces
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        if len(self._pieces) == 1 and isinstance(self._pieces[0], bytes):
            return self._pieces[0]
        return join_pieces(self._pieces)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MailPieces):
            return NotImplemented
        return len(self) == len(other) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        return f"MailPieces({len(self)} bytes)"

    def endswith(self, suffix: tuple[bytes, ...]) -> bool:
        for piece in reversed(self._pieces):
            if isinstance(piece, bytes):
                if piece:
                    return piece.endswith(suffix)
            elif len(piece):
                return b"\n".endswith(suffix)  # its lines end in CRLF
        return False

    def isascii(self) -> bool:
        return all(isinstance(p, Base64) or p.isascii() for p in self._pieces)

    def chunks(self) -> Iterator[bytes]:
        """The mail's bytes in order, none larger than a base64 step or a written piece."""
        for piece in self._pieces:
            if isinstance(piece, bytes):
                yield piece
            else:
                yield from piece.steps()
