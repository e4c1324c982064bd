"""A mail's structure without its large bodies, for the ``email`` parser.

The stdlib feed parser keeps a body as one string per line and joins them at the end: a
25 MB attachment (34 MB of base64) cost about 100 MB on top of the mail while it was read.
:func:`skeleton` cuts each large leaf body out of the raw bytes and puts a one-line marker in
its place; the parser reads the small rest, and the reader decodes a marked body straight
from the raw bytes (:meth:`Skeleton.body`), with no copy of its encoded text.

Only a plainly built mail is cut: every multipart has its boundary, its delimiters and its
closing delimiter, nesting stays shallow. Parts whose bytes may be used as they are stay
whole: nested mails (``message/*``) and everything inside a signed, encrypted or report
multipart. Anything else unusual and the whole mail goes to the parser as before, which
knows how to recover (and to name the defects).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import secrets
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

__all__ = ["CUT_ABOVE", "Skeleton", "skeleton"]

CUT_ABOVE = 256 * 1024  # a leaf body larger than this is not given to the parser
_MAX_DEPTH = 20
_KEEP_WHOLE = frozenset(("signed", "encrypted", "report"))
_CUT_ENCODINGS = frozenset(("", "7bit", "8bit", "binary", "base64", "quoted-printable"))
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")


@dataclasses.dataclass
class Skeleton:
    data: bytes  # the mail from its header block on, large bodies replaced by markers
    raw: bytes
    spans: dict[str, tuple[int, int]]  # marker -> where its body is in ``raw``

    def body(self, payload: object) -> memoryview | None:
        """The raw (still transfer-encoded) body a part's payload marks, or None."""
        if not isinstance(payload, str) or len(payload) > 80:
            return None
        span = self.spans.get(payload.strip())
        return None if span is None else memoryview(self.raw)[span[0] : span[1]]


class _Unusual(Exception):
    """The mail is not cut (see the module docstring)."""


def skeleton(raw: bytes, start: int, cut_above: int | None = None) -> Skeleton | None:
    """The mail at ``raw[start:]`` with its leaf bodies over ``cut_above`` (default
    :data:`CUT_ABOVE`) cut out, or None when it has none or is not built plainly enough."""
    cut_above = CUT_ABOVE if cut_above is None else cut_above
    if len(raw) - start <= cut_above:
        return None
    cuts: list[tuple[int, int]] = []
    try:
        _entity(raw, start, len(raw), cuts, cut_above, 0)
    except _Unusual:
        return None
    if not cuts:
        return None
    token = secrets.token_hex(8)
    pieces: list[bytes] = []
    spans: dict[str, tuple[int, int]] = {}
    pos = start
    for index, (begin, end) in enumerate(cuts):
        marker = f"flowrt-cut-{token}-{index}"
        spans[marker] = (begin, end)
        pieces += [raw[pos:begin], marker.encode("ascii")]
        pos = end
    pieces.append(raw[pos:])
    return Skeleton(b"".join(pieces), raw, spans)


def _entity(
    raw: bytes, begin: int, end: int, cuts: list[tuple[int, int]], cut_above: int, depth: int
) -> None:
    """Note the bodies to cut in the entity at ``raw[begin:end]`` (headers, then body)."""
    if depth > _MAX_DEPTH or raw.startswith((b"\r\n", b"\n"), begin):
        raise _Unusual  # (a part without headers: rare, and the parser knows it)
    blank = _END_OF_HEADERS.search(raw, begin, end)
    if blank is None:
        raise _Unusual
    head: Message = BytesHeaderParser(policy=compat32).parsebytes(raw[begin : blank.end()])
    if head.defects:
        raise _Unusual
    body = blank.end()
    maintype = head.get_content_maintype()
    if maintype == "message":
        return  # a nested mail: its bytes are kept as they are
    if maintype == "multipart":
        if head.get_content_subtype() in _KEEP_WHOLE:
            return
        boundary = head.get_boundary()
        if not boundary:
            raise _Unusual
        for part_begin, part_end in _parts(raw, body, end, boundary):
            _entity(raw, part_begin, part_end, cuts, cut_above, depth + 1)
        return
    cte = str(head.get("content-transfer-encoding", "")).strip().lower()
    if end - body > cut_above and cte in _CUT_ENCODINGS:
        cuts.append((body, end))


def _parts(raw: bytes, begin: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """Where the parts of a multipart body are: each from the line after a delimiter to
    the line break before the next one (that line break belongs to the delimiter)."""
    delimiter = re.compile(
        rb"^--" + re.escape(boundary.encode("latin-1")) + rb"(--)?[ \t]*(?:\r?\n|\Z)",
        re.MULTILINE,
    )
    found = list(delimiter.finditer(raw, begin, end))
    if not found or found[-1].group(1) is None or any(m.group(1) for m in found[:-1]):
        raise _Unusual  # no closing delimiter, or one before the last
    parts: list[tuple[int, int]] = []
    for opening, closing in itertools.pairwise(found):
        stop = closing.start()  # (the regex's ^ follows a line feed)
        stop -= 2 if raw[stop - 2 : stop] == b"\r\n" else 1
        if stop < opening.end():
            raise _Unusual
        parts.append((opening.end(), stop))
    if not parts:
        raise _Unusual
    return parts
