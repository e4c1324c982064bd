"""A large base64 body left in the mail's bytes, decoded only when it is used.

The reader used to decode a cut-out attachment (see :mod:`.skeleton`) at once: a forwarded
25 MB attachment was then alive as the raw mail's 34 MB of base64 and its own 25 MB until
the mail was sent. :func:`lazy_base64` checks the encoded text instead (plain base64: only
its alphabet and white space, padding at the very end, whole groups) and counts its size;
the composer then re-encodes it a step at a time as DATA is written
(:class:`~.pieces.Base64`), and a step that reads ``data`` gets it decoded whole. Text that
is not plain base64 is decoded at once as before, so that its defects are named.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator

__all__ = ["LazyBase64", "lazy_base64"]

_STEP = 1 << 20  # encoded bytes looked at, or decoded, at a time
_SPACE = b" \t\r\n"
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class LazyBase64:
    """Base64 text in a view of the mail's bytes, as the content it encodes."""

    __slots__ = ("_encoded", "_size")

    def __init__(self, encoded: memoryview, size: int) -> None:
        self._encoded = encoded
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read(self) -> bytes:
        return binascii.a2b_base64(self._encoded)

    def steps(self) -> Iterator[bytes]:
        carry = b""
        encoded = self._encoded
        for at in range(0, len(encoded), _STEP):
            text = carry + bytes(encoded[at : at + _STEP]).translate(None, _SPACE)
            whole = len(text) - len(text) % 4
            carry = text[whole:]
            if whole:
                yield binascii.a2b_base64(text[:whole])

    def __deepcopy__(self, memo: dict[int, object]) -> LazyBase64:
        return self  # a read-only view: a copy would be the same

    def __repr__(self) -> str:
        return f"<base64 in the mail, {self._size} bytes decoded>"


def lazy_base64(encoded: memoryview) -> LazyBase64 | None:
    """The content of plain base64 text, left encoded; None for anything else."""
    count = padding = 0
    for at in range(0, len(encoded), _STEP):
        text = bytes(encoded[at : at + _STEP]).translate(None, _SPACE)
        if text.translate(None, _ALPHABET + b"="):
            return None  # a stray character: the eager decoder names it
        pad = text.find(b"=") if not padding else 0
        if pad >= 0:
            if text[pad:].strip(b"="):
                return None  # padding before the end
            padding += len(text) - pad
        count += len(text)
    if count % 4 or padding > 2:
        return None
    return LazyBase64(encoded, count // 4 * 3 - padding)
