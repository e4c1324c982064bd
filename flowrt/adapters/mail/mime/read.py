"""Mail bytes -> :class:`~flowrt.engine.exchange.Exchange`: what the sender adapters and
``flowrt simulate`` do with every mail they read.

A polled mail is never refused for being badly formed: whatever can be read is kept, and each
problem becomes one short sentence in ``exchange.properties["mail.defects"]`` (present only
when there is a problem). Only bytes that are not a mail at all (empty input, a PNG or a PDF
file) raise :class:`~flowrt.errors.MessageFormatException`.

What the exchange gets:

- headers: every header of the mail, in order, repeats kept, unfolded and RFC 2047-decoded
  (or only those named in ``headers``);
- body: the text/plain part (else the text/html part) as bytes in its own charset;
- html: the text/html alternative of a mail that has a text/plain part too;
- related: the inline parts of a multipart/related (images the HTML shows by ``cid:``), with
  their Content-IDs;
- attachments: every other part with a file name or ``Content-Disposition: attachment``, every
  non-text part, further text parts (inline), and nested mails as ``.eml`` files; names
  decoded, made safe and unique; content type parameters, disposition and Content-ID kept;
- original: the mail's bytes; sealed: a signed, report or encrypted mail's entity as it was;
- IDs: a new message ID; the correlation ID is the mail's Message-ID.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os.path
import re
from collections.abc import Iterator, Sequence
from email import errors as email_errors
from email.feedparser import BytesFeedParser
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import Compat32, compat32
from io import BytesIO
from typing import Literal

from flowrt.adapters.mail.mime.lazy import lazy_base64
from flowrt.adapters.mail.mime.sealed import seal
from flowrt.adapters.mail.mime.skeleton import Skeleton, skeleton
from flowrt.engine.exchange import Attachment, Exchange, Headers, LazyContent
from flowrt.errors import MessageFormatException

__all__ = ["DEFECTS_PROPERTY", "ORIGINAL_PROPERTY", "decode_words", "mail_to_exchange"]

DEFECTS_PROPERTY = "mail.defects"
ORIGINAL_PROPERTY = "mail.original"

_SNIFF = 64 * 1024  # how far we look for signs that the input is not a mail
_CHUNK = 64 * 1024  # parser feed size: no second full-size copy of a 25 MB mail
_MAX_NAME = 200  # longest attachment name we keep (file systems stop at 255 bytes)

# A header field name: printable ASCII except the colon (RFC 5322 section 2.2), then ':'.
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LEADING_BLANK = re.compile(rb"(?:[ \t]*\r?\n)*")
_ENCODED_WORD_8BIT = re.compile(rb"=\?([^?\s]+)\?([QqBb])\?([^?]*[\x80-\xff][^?]*)\?=")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?]*)\?=")
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_EML_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL_BYTES)
_BASE64_OK = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
_KNOWN_CTE = frozenset(
    ("", "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode", "uue")
)
_SIGNATURES = (
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\x1f\x8b", "gzip data"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Office document"),
    (b"%!PS", "a PostScript file"),
)
# Only the built-in table: /etc/mime.types differs between machines, generated names must not.
_MIME_TYPES = mimetypes.MimeTypes()

_DEFECT_TEXT: dict[type[email_errors.MessageDefect], str] = {
    email_errors.NoBoundaryInMultipartDefect: "a multipart part without a boundary parameter",
    email_errors.StartBoundaryNotFoundDefect: "the multipart boundary never occurs in the part",
    email_errors.CloseBoundaryNotFoundDefect: (
        "the multipart has no closing boundary (truncated mail?); the parts found were kept"
    ),
    email_errors.FirstHeaderLineIsContinuationDefect: "the first header line is a continuation",
    email_errors.MisplacedEnvelopeHeaderDefect: "an mbox 'From ' line among the headers",
    email_errors.MissingHeaderBodySeparatorDefect: (
        "a line in the header block is not a header; it and the rest were taken as the body"
    ),
    email_errors.MultipartInvariantViolationDefect: "a multipart without any parts",
    email_errors.InvalidMultipartContentTransferEncodingDefect: (
        "a multipart with a transfer encoding other than 7bit, 8bit or binary"
    ),
    email_errors.InvalidBase64PaddingDefect: "base64 content with bad padding",
    email_errors.InvalidBase64CharactersDefect: "base64 content with characters outside base64",
    email_errors.InvalidBase64LengthDefect: "base64 content that is cut short",
}
_MAX_DEPTH = 50  # multipart nesting we follow; real mail stays within 5 or so
_TOO_DEEP = "parts nested too deeply to read; the rest was kept as raw text"
_RECOVERED = "the declared boundary is not used; the parts were found by the one that is"
_UNFOLDED = "the boundary parameter is folded; it was read unfolded, as mail clients do"
_SUPERSEDED = (
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.MultipartInvariantViolationDefect,
)


# ----------------------------------------------------------------------------- entry point


def mail_to_exchange(
    raw: bytes,
    *,
    headers: Sequence[str] | None = None,
    attachments: Literal["keep", "drop"] = "keep",
    keep_original: bool = False,
) -> Exchange:
    """Read one mail into a new exchange; see the module docstring for what goes where.

    Raises :class:`MessageFormatException` only when ``raw`` is not a mail at all.
    """
    start = _header_start(raw)
    defects: list[str] = []
    if start is None:  # text without a header block: keep it all as the body
        defects.append("no header lines: the whole input was taken as the body")
        charset = _guess_charset(raw, "the mail", defects)
        exchange = Exchange(body=raw, charset=charset)
    else:
        if start:
            defects.append("blank lines before the header block were skipped")
        reader = _MailReader(defects, attachments == "keep", _linesep(raw, start))
        reader.cut = skeleton(raw, start)
        try:
            root = _parse(raw, start) if reader.cut is None else _parse(reader.cut.data, 0)
        except RecursionError:  # the stdlib parser recurses once per nesting level
            defects.append(_TOO_DEEP)
            root = BytesHeaderParser(policy=compat32).parsebytes(raw[start:])
            reader.max_depth = 0
            reader.cut = None
        exchange = reader.read(root, headers)
        exchange.sealed = seal(raw, start, root, exchange)
    exchange.original = raw
    if keep_original:
        exchange.properties[ORIGINAL_PROPERTY] = raw
    if defects:
        exchange.properties[DEFECTS_PROPERTY] = list(dict.fromkeys(defects))
    return exchange


# ----------------------------------------------------------------------------- is it a mail?


def _header_start(raw: bytes) -> int | None:
    """Offset of the header block; None for text without one; raises for non-mail input."""
    head = raw[:_SNIFF]
    if not head.strip():
        what = "empty" if not raw else "only white space"
        raise MessageFormatException(f"not a mail: the input is {what}")
    blank = _LEADING_BLANK.match(head)
    start = blank.end() if blank else 0
    if head.startswith(b"From ", start) or _HEADER_LINE.match(head, start):
        return start
    kind = _binary_kind(head)
    if kind is not None:
        raise MessageFormatException(
            f"not a mail: no header lines found in the first 64 KiB; the data looks like {kind}"
        )
    return None


def _linesep(raw: bytes, start: int) -> str:
    """The line ending the mail uses (nested mails are written back with it)."""
    end = raw.find(b"\n", start, start + _SNIFF)
    return "\n" if end > 0 and raw[end - 1 : end] != b"\r" else "\r\n"


def _binary_kind(head: bytes) -> str | None:
    """What binary data looks like, or None when it may be text."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    control = len(head.translate(None, _NOT_CONTROL))
    if b"\x00" in head or control > len(head) * 0.05:  # text has (almost) no control bytes
        return "binary data"
    return None


def _parse(raw: bytes, start: int) -> Message:
    # compat32 rather than policy.default: the feed parser is the same, but policy.default
    # parses header values into objects on access, and its header parser still raises on
    # some malformed values (IndexError on "To: a@"). We never need those objects: headers
    # are decoded here, tolerantly, from their raw text. Fed in chunks because
    # BytesParser.parsebytes copies the whole mail into one str and then into a StringIO.
    parser = BytesFeedParser(policy=compat32)
    for offset in range(start, len(raw), _CHUNK):
        parser.feed(raw[offset : offset + _CHUNK])
    message = parser.close()
    assert isinstance(message, Message)
    return message


# ----------------------------------------------------------------------------- the reader


class _MailReader:
    """One mail's walk: picks the body, collects attachments, records defects."""

    def __init__(self, defects: list[str], keep_attachments: bool, linesep: str) -> None:
        self.defects = defects
        self.keep_attachments = keep_attachments
        self.linesep = linesep
        self.nodes: list[tuple[Message, str]] = []  # every part visited, for its defects
        # id() of multiparts re-read with their real boundary -> the defect that says so
        self.recovered: dict[int, str] = {}
        self.alternatives: list[str] = []  # paths of the multipart/alternative parts
        self.names = _Names()
        self.max_depth = _MAX_DEPTH
        self.cut: Skeleton | None = None  # large bodies read from the raw bytes (skeleton.py)

    def read(self, root: Message, wanted: Sequence[str] | None) -> Exchange:
        _fix_8bit_headers(root, "the mail", self.defects)
        items = [(name, self._header_value(name, value)) for name, value in root.raw_items()]
        self._check_required(items)
        correlation = _message_id(items)
        if wanted is not None:
            keep = {name.strip().lower() for name in wanted}
            items = [(name, value) for name, value in items if name.lower() in keep]
        self._check_once(items)
        leaves = list(self._leaves(root, ""))
        exchange = Exchange(headers=Headers(items), correlation_id=correlation)
        text, html = _pick_body(leaves, self.alternatives)
        if text is not None:
            self._read_body(*text, exchange)
        if html is not None and text is not None:
            part, path = html
            where = _where(part, path)
            exchange.html = self._content(part, where)
            exchange.html_charset = _body_charset(part, exchange.html, where, self.defects)
        elif html is not None:
            self._read_body(*html, exchange)
        chosen = {id(found[0]) for found in (text, html) if found is not None}
        for part, path, kind in leaves:
            if id(part) in chosen:
                continue
            if kind == "related":
                exchange.related.append(self._attachment(part, path, "inline", related=True))
            elif self.keep_attachments:
                # a further text (the 2nd text of a report, texts between images) is kept
                # where it was: inline, as an attachment part
                inline = "inline" if kind == "body" else "attachment"
                exchange.attachments.append(self._attachment(part, path, inline))
        self._collect_parser_defects()
        return exchange

    # -- headers

    def _header_value(self, name: str, raw: str) -> str:
        text, problems = decode_words(_unfold(str(raw)))
        self.defects.extend(f"header {name}: {problem}" for problem in problems)
        return text

    def _check_once(self, items: list[tuple[str, str]]) -> None:
        counts: dict[str, int] = {}
        for name, _ in items:
            counts[name.lower()] = counts.get(name.lower(), 0) + 1
        for name in ("Subject", "Date", "From", "Message-ID"):
            if counts.get(name.lower(), 0) > 1:
                self.defects.append(f"{counts[name.lower()]} {name} headers; the first is used")

    def _check_required(self, items: list[tuple[str, str]]) -> None:
        present = {name.lower() for name, _ in items}
        for required in ("From", "Date"):  # RFC 5322 section 3.6: the only mandatory fields
            if required.lower() not in present:
                self.defects.append(f"no {required} header")

    # -- structure

    def _leaves(self, part: Message, path: str) -> Iterator[tuple[Message, str, str]]:
        """Leaf parts in mail order as (part, path, kind); nested mails are leaves."""
        self.nodes.append((part, path))
        if path:
            _fix_8bit_headers(part, _where(part, path), self.defects)
        maintype = part.get_content_maintype()
        depth = path.count(".") + 1 if path else 0
        if depth >= self.max_depth and maintype == "multipart":
            if self.max_depth:
                self.defects.append(f"{_where(part, path)}: {_TOO_DEEP}")
            yield part, path, "body" if not path else "attachment"
            return
        if maintype == "multipart" and not part.is_multipart():
            unfolded = _unfolded_boundary(part)
            recovered = _recover_multipart(part, unfolded)
            if recovered is not None:
                self.recovered[id(part)] = _UNFOLDED if unfolded else _RECOVERED
                part = recovered
        if part.is_multipart() and maintype != "message":
            subparts = [sub for sub in part.get_payload() if isinstance(sub, Message)]
            related = part.get_content_subtype() == "related"
            if part.get_content_subtype() == "alternative":
                self.alternatives.append(path)
            start = _related_start(part, subparts) if related else -1
            for index, sub in enumerate(subparts, 1):
                where = f"{path}.{index}" if path else str(index)
                if start >= 0 and index - 1 != start and not sub.is_multipart():
                    kind = _kind(sub, sub.get_content_maintype())
                    self.nodes.append((sub, where))
                    _fix_8bit_headers(sub, _where(sub, where), self.defects)
                    inline = kind != "attachment" or _is_inline(sub)
                    yield sub, where, "related" if inline else kind
                    continue
                yield from self._leaves(sub, where)
        else:
            yield part, path, _kind(part, maintype)

    # -- body

    def _read_body(self, part: Message, path: str, exchange: Exchange) -> None:
        where = _where(part, path)
        exchange.body = self._content(part, where)
        if part.get_content_type() == "text/html":
            exchange.content_type = "text/html"
        elif str(part.get_param("format", "")).lower() == "flowed":
            delsp = str(part.get_param("delsp", "")).lower()
            exchange.body_params = "format=flowed" + ("; delsp=yes" if delsp == "yes" else "")
        exchange.charset = _body_charset(part, exchange.body, where, self.defects)

    # -- attachments

    def _attachment(
        self, part: Message, path: str, disposition: str, *, related: bool = False
    ) -> Attachment:
        where = _where(part, path)
        content_type = part.get_content_type()
        filename = _filename(part, where, self.defects)
        disposition = part.get_content_disposition() or disposition
        content_id = str(part.get("content-id", "")).strip().strip("<>").strip()
        full_type = _full_type(part, content_type)
        data: bytes | LazyContent
        if related and not filename and content_id:
            # an image the HTML shows by cid: needs no file name, and gets none it never had
            data = self._leaf_content(part, where)
            return Attachment("", full_type, data, disposition, content_id)
        if not part.is_multipart():  # a leaf, or a message/* sent base64-encoded
            data = self._leaf_content(part, where)
        elif content_type == "message/rfc822" and (inner := _first_part(part)) is not None:
            data, subject = self._nested_mail(part, inner, where)
            name = self.names.nested(filename or _eml_name(subject))
            return Attachment(name, content_type, data, disposition, content_id)
        else:  # message/delivery-status, a multipart nested too deeply: the body as it was
            data = _flatten(part, self.linesep).split(self.linesep.encode() * 2, 1)[-1]
            if content_type.startswith("multipart/"):
                self.defects.append(f"{where}: kept as an attachment ({content_type}, unread)")
        name = self.names.take(filename, content_type)
        return Attachment(name, full_type, data, disposition, content_id)

    def _leaf_content(self, part: Message, where: str) -> bytes | LazyContent:
        """An attachment's content: a large base64 body is left in the mail's bytes."""
        if self.cut is not None and _cte(part) == "base64":
            cut = self.cut.body(part.get_payload())
            lazy = lazy_base64(cut) if cut is not None else None
            if lazy is not None:
                part.set_payload("")
                return lazy
        return self._content(part, where)

    def _content(self, part: Message, where: str) -> bytes:
        """The part's bytes after transfer decoding; releases the parser's encoded copy."""
        cte = _cte(part)
        if cte not in _KNOWN_CTE:
            self.defects.append(f"{where}: unknown transfer encoding {cte!r}; content kept as is")
        cut = self.cut.body(part.get_payload()) if self.cut is not None else None
        encoded = _base64_text(part) if cte == "base64" and cut is None else None
        if cut is not None:
            data, problems = _decode_cut(cut, cte)
            self.defects.extend(f"{where}: {problem}" for problem in problems)
        elif encoded is not None:
            data, problems = decode_base64(encoded)
            self.defects.extend(f"{where}: {problem}" for problem in problems)
        else:
            decoded = part.get_payload(decode=True)
            data = decoded if isinstance(decoded, bytes) else b""
        # The parser's copy of a 25 MB attachment (as base64 text) is not needed any more.
        part.set_payload("")
        return data

    def _nested_mail(self, part: Message, inner: Message, where: str) -> tuple[bytes, str]:
        """The bytes of the mail in a message/rfc822 part, and its decoded subject."""
        data = _flatten(inner, self.linesep)
        cte = _cte(part)
        if cte in ("base64", "quoted-printable"):
            # Not allowed for message/rfc822, yet sent: the parser read the encoded text as
            # a mail without headers; decode that text and read the mail in it.
            self.defects.append(f"{where}: a nested mail in {cte}, which RFC 2046 forbids")
            encoded = data.lstrip(b"\r\n")
            data = decode_base64(encoded)[0] if cte == "base64" else binascii.a2b_qp(encoded)
            inner = BytesHeaderParser(policy=compat32).parsebytes(data[:_SNIFF])
        return data, _subject(inner)

    # -- defects

    def _collect_parser_defects(self) -> None:
        for part, path in self.nodes:
            where = _where(part, path)
            if id(part) in self.recovered:
                self.defects.append(f"{where}: {self.recovered[id(part)]}")
            for defect in part.defects:
                if id(part) in self.recovered and isinstance(defect, _SUPERSEDED):
                    continue
                text = _DEFECT_TEXT.get(type(defect)) or str(defect) or type(defect).__name__
                self.defects.append(f"{where}: {text}")


def _decode_cut(encoded: memoryview, cte: str) -> tuple[bytes, list[str]]:
    """A body cut out by the skeleton, decoded as ``get_payload(decode=True)`` (or, for
    base64, :func:`decode_base64`) would, without copying its encoded text first."""
    if cte == "base64":
        step = 1 << 20
        stray = any(
            bytes(encoded[at : at + step]).translate(None, _BASE64_OK)
            for at in range(0, len(encoded), step)
        )
        if not stray:
            try:
                return binascii.a2b_base64(encoded), []
            except binascii.Error:
                pass
        return decode_base64(bytes(encoded))
    if cte == "quoted-printable":
        return binascii.a2b_qp(encoded), []
    return bytes(encoded), []


def _cte(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "")).strip().lower()


def _first_part(part: Message) -> Message | None:
    payload = part.get_payload()  # a list here: no charset conversion, nothing to fail
    first = payload[0] if isinstance(payload, list) and payload else None
    return first if isinstance(first, Message) else None


def _base64_text(part: Message) -> bytes | None:
    """The encoded text of a base64 part, for our own, more forgiving decoder."""
    try:
        return str(part.get_payload()).encode("ascii", "replace")
    except (ValueError, LookupError):  # 8-bit junk and a charset parameter Python chokes on
        return None  # the stdlib's decoder then does what it can


def _kind(part: Message, maintype: str) -> str:
    """``body`` (a body candidate) or ``attachment`` (nested mails included)."""
    if maintype == "message":
        return "attachment"
    if part.get_content_disposition() == "attachment" or _file_param(part) is not None:
        return "attachment"
    if part.get_content_type() in ("text/plain", "text/html") or maintype == "multipart":
        return "body"  # a multipart left as text (boundary lost) is shown as text
    return "attachment"  # inline images, calendars, anything else


_Found = tuple[Message, str] | None


def _pick_body(
    leaves: list[tuple[Message, str, str]], alternatives: list[str]
) -> tuple[_Found, _Found]:
    """The first text/plain body candidate, and the text/html one that is its alternative
    (within one multipart/alternative), or the first text/html when there is no text. The
    others are kept as inline attachments by the caller."""
    candidates = [(part, path) for part, path, kind in leaves if kind == "body"]
    texts = [found for found in candidates if found[0].get_content_type() != "text/html"]
    htmls = [found for found in candidates if found[0].get_content_type() == "text/html"]
    text = texts[0] if texts else None
    if text is None:
        return None, htmls[0] if htmls else None
    for part, path in htmls:
        if any(_within(text[1], alt) and _within(path, alt) for alt in alternatives):
            return text, (part, path)
    return text, None


def _within(path: str, parent: str) -> bool:
    return not parent or path.startswith(parent + ".")


def _related_start(part: Message, subparts: list[Message]) -> int:
    """Index of a multipart/related's root part: the one its ``start`` parameter names, else
    the first (RFC 2387)."""
    start = part.get_param("start", None)
    if isinstance(start, str) and start.strip():
        wanted = start.strip().strip("<>")
        for index, sub in enumerate(subparts):
            if str(sub.get("content-id", "")).strip().strip("<>") == wanted:
                return index
    return 0


def _is_inline(part: Message) -> bool:
    return part.get_content_disposition() != "attachment" and "content-id" in part


def _full_type(part: Message, content_type: str) -> str:
    """The content type with its parameters (charset, format, method...), without the name
    (the attachment carries that decoded) and the boundary."""
    out = [content_type]
    try:
        params = part.get_params(None, "content-type") or []
    except (TypeError, ValueError, LookupError, UnicodeError):
        return content_type
    for key, value in params[1:]:
        key = key.lower()
        if key in ("name", "boundary") or not key or not _TOKEN.fullmatch(key):
            continue
        text = value if isinstance(value, str) else ""  # RFC 2231 ones other than the name: rare
        if not text:
            continue
        if _TOKEN.fullmatch(text):
            out.append(f"{key}={text}")
        elif text.isascii() and "\n" not in text and "\r" not in text:
            quoted = text.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{key}="{quoted}"')
    return "; ".join(out)


def _where(part: Message, path: str) -> str:
    if not path:
        return "the mail"
    return f"part {path} ({part.get_content_type()})"


def _message_id(items: list[tuple[str, str]]) -> str:
    for name, value in items:
        if name.lower() == "message-id":
            return value.strip().strip("<>").strip()
    return ""


# ----------------------------------------------------------------------------- recovery


def _recover_multipart(part: Message, unfolded: bytes | None) -> Message | None:
    """A multipart whose declared boundary is missing or wrong: look for the boundary the
    parts actually use (the first ``--TOKEN`` line) and parse again with it."""
    payload = part.get_payload(decode=True)  # the raw bytes: a multipart is 7bit or 8bit
    if not isinstance(payload, bytes):
        return None
    boundary = (
        unfolded if unfolded and re.search(rb"^--" + re.escape(unfolded), payload, re.M) else None
    )
    if boundary is None:
        match = re.search(rb"^--([!-~](?:[ -~]{0,68}[!-~])?)[ \t]*\r?$", payload, re.MULTILINE)
        if match is None or payload.count(b"--" + match.group(1)) < 2:
            return None
        boundary = match.group(1)
    boundary = boundary.replace(b'"', b"").replace(b"\\", b"")
    subtype = part.get_content_subtype().encode("ascii", "replace")
    if not re.fullmatch(rb"[a-z0-9.+-]+", subtype):
        subtype = b"mixed"
    header = b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\n\n'
    try:
        recovered = _parse(header + payload, 0)
    except RecursionError:
        return None
    return recovered if recovered.is_multipart() else None


def _unfolded_boundary(part: Message) -> bytes | None:
    """The declared boundary when folding broke it (``boundary="abc\\n def"``): mail clients
    unfold it, keeping the white space at the fold, and so do we."""
    declared = part.get_param("boundary", None)
    if not isinstance(declared, str) or "\n" not in declared:
        return None
    return re.sub(rb"\r?\n", b"", declared.encode("utf-8", "surrogateescape")).strip() or None


# ----------------------------------------------------------------------------- decoding


def decode_words(value: str) -> tuple[str, list[str]]:
    """Decode RFC 2047 encoded words, tolerantly: a word that cannot be decoded (bad base64,
    unknown charset) is kept as written and reported. Adjacent words in one charset are
    joined before decoding, so a character split across two words survives."""
    if "=?" not in value:
        return value, []
    out: list[str] = []
    problems: list[str] = []
    pending: list[tuple[bytes, str]] = []
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position : match.start()]
        position = match.end()
        decoded = _decode_word(match, problems)
        if decoded is None:
            out.append(_flush(pending, problems) + gap + match.group(0))
            continue
        if not pending or gap.strip():  # white space between two encoded words is dropped
            out.append(_flush(pending, problems) + gap)
        if pending and pending[-1][1] == decoded[1]:
            pending[-1] = (pending[-1][0] + decoded[0], decoded[1])
        else:
            pending.append(decoded)
    out.append(_flush(pending, problems) + value[position:])
    return "".join(out), problems


def _decode_word(match: re.Match[str], problems: list[str]) -> tuple[bytes, str] | None:
    charset = match.group(1).split("*", 1)[0].lower()  # RFC 2231 adds *LANGUAGE
    encoding, text = match.group(2).upper(), match.group(3)
    if not known_charset(charset):
        problems.append(f"unknown charset {charset!r} in {match.group(0)!r}; kept as written")
        return None
    try:
        data = text.encode("ascii")
        if encoding == "B":
            return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True), charset
        return binascii.a2b_qp(data, header=True), charset
    except (UnicodeEncodeError, binascii.Error):
        problems.append(f"broken encoded word {match.group(0)!r}; kept as written")
        return None


def _flush(pending: list[tuple[bytes, str]], problems: list[str]) -> str:
    text = []
    for data, charset in pending:
        decoded = data.decode(charset, errors="replace")
        if "\ufffd" in decoded and b"\xef\xbf\xbd" not in data:
            problems.append(f"encoded text that is not valid {charset}")
        text.append(decoded)
    pending.clear()
    return "".join(text)


def decode_base64(encoded: bytes) -> tuple[bytes, list[str]]:
    """Decode base64 content, recovering all that can be: stray characters are skipped and a
    cut-off last group is dropped, each reported."""
    problems: list[str] = []
    if encoded.translate(None, _BASE64_OK):
        problems.append("base64 content with characters outside base64; they were skipped")
    try:
        return binascii.a2b_base64(encoded), problems  # skips line breaks and stray characters
    except binascii.Error:
        pass
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", encoded)
    usable = len(clean) - (len(clean) % 4 == 1)  # one extra character carries no full byte
    if usable < len(clean):
        problems.append("base64 content that is cut short; the last incomplete bytes were lost")
    else:
        problems.append("base64 content with bad padding")
    clean = clean[:usable]
    return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4)), problems


def known_charset(name: str) -> bool:
    """Whether Python can decode text in ``name`` (``base64`` and friends are codecs too, but
    not text encodings)."""
    try:
        "".encode(name)
    except (LookupError, ValueError):
        return False
    return True


def _body_charset(part: Message, body: bytes, where: str, defects: list[str]) -> str:
    declared = _param(part, "charset", "content-type")
    if isinstance(declared, tuple):  # RFC 2231 form: (charset, language, value)
        declared = declared[2]
    declared = declared.strip().strip('"').lower() if declared else None
    if declared is None:
        return _guess_charset(body, where, defects)
    if not known_charset(declared):
        defects.append(f"{where}: unknown charset {declared!r}; the text is read as utf-8")
        return "utf-8"
    try:
        body.decode(declared)
    except UnicodeDecodeError:
        defects.append(f"{where}: the text is not valid {declared}; bad bytes show as U+FFFD")
    return declared


def _guess_charset(body: bytes, where: str, defects: list[str]) -> str:
    """No charset declared: ASCII and UTF-8 are read as utf-8, anything else as windows-1252
    (what mailers that forget the charset almost always meant)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        defects.append(f"{where}: 8-bit text without a charset; read as windows-1252")
        return "windows-1252"
    return "utf-8"


def _fix_8bit_headers(part: Message, where: str, defects: list[str]) -> None:
    """Raw 8-bit bytes in headers (not allowed without SMTPUTF8, yet common): decode them as
    UTF-8, else windows-1252, so that names and parameters read as text."""
    items = list(part.raw_items())
    if not any(_has_8bit(value) for _, value in items):
        return
    for name in {name for name, _ in items}:
        del part[name]
    for name, value in items:
        if _has_8bit(value):
            data = _decode_8bit_words(value.encode("ascii", "surrogateescape"))
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError:
                value = data.decode("windows-1252", errors="replace")
                defects.append(f"{where}: header {name} has 8-bit bytes that are not UTF-8")
        part.set_raw(name, value)


def _decode_8bit_words(data: bytes) -> bytes:
    """Encoded words with raw 8-bit bytes inside (=?iso-8859-1?Q?caf\xc3\xa9?=), decoded as
    mail readers do: the bytes as UTF-8 when they are, else in the declared charset. The
    result is written back as UTF-8 text, which the caller then reads."""

    def decode(match: re.Match[bytes]) -> bytes:
        charset = match.group(1).decode("ascii", "replace").split("*", 1)[0].lower()
        encoded = match.group(3)
        if match.group(2) in b"Bb":
            return match.group(0)  # base64 has no 8-bit bytes to read: leave it to the decoder
        raw = binascii.a2b_qp(encoded, header=True)
        try:
            return raw.decode("utf-8").encode("utf-8")
        except UnicodeDecodeError:
            pass
        if not known_charset(charset):
            charset = "windows-1252"
        return raw.decode(charset, "replace").encode("utf-8")

    out: list[bytes] = []
    position = 0
    for match in _ENCODED_WORD_8BIT.finditer(data):
        gap = data[position : match.start()]
        # white space between two encoded words is not part of the text (RFC 2047 6.2)
        if not (position and not gap.strip()):
            out.append(gap)
        out.append(decode(match))
        position = match.end()
    out.append(data[position:])
    return b"".join(out)


def _has_8bit(value: object) -> bool:
    return isinstance(value, str) and not value.isascii()


# ----------------------------------------------------------------------------- names


def _filename(part: Message, where: str, defects: list[str]) -> str:
    """The part's file name: RFC 2231 and (non-standard, but common) RFC 2047 decoded."""
    raw = _file_param(part)
    if raw is None:
        return ""
    if isinstance(raw, tuple):  # RFC 2231: (charset, language, text read as latin-1)
        charset, _, text = raw
        data = text.encode("latin-1", errors="replace")
        if not known_charset(charset or "us-ascii"):
            defects.append(f"{where}: file name in unknown charset {charset!r}; read as utf-8")
            charset = "utf-8"
        name = data.decode(charset or "us-ascii", errors="replace")
    else:
        name, problems = decode_words(str(raw).strip().strip('"'))
        defects.extend(f"{where}: file name: {problem}" for problem in problems)
    return safe_filename(name)


def _file_param(part: Message) -> str | tuple[str, str, str] | None:
    found = _param(part, "filename", "content-disposition")
    return found if found is not None else _param(part, "name", "content-type")


def _param(part: Message, name: str, header: str) -> str | tuple[str, str, str] | None:
    """A header parameter, or None; the stdlib raises on some malformed RFC 2231
    continuations (TypeError, ValueError), which we treat as absent."""
    try:
        value = part.get_param(name, None, header)
    except (TypeError, ValueError, LookupError, UnicodeError):
        return None
    if isinstance(value, tuple):
        charset, language, text = value
        return (charset or "", language or "", text)
    return value


def safe_filename(name: str) -> str:
    """A name that is safe as a file name: no directories, no control characters, not too
    long (the extension is kept). Empty when nothing usable is left."""
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE_NAME_CHARS.sub("", name).strip().strip(".").strip()
    if len(name) > _MAX_NAME:
        stem, ext = os.path.splitext(name)
        name = stem[: _MAX_NAME - len(ext[:20])] + ext[:20]
    return name


def _eml_name(subject: str) -> str:
    text = _UNSAFE_EML_CHARS.sub("_", subject).strip().strip(".").strip()
    return f"{text[: _MAX_NAME - 4]}.eml" if text else ""


class _Names:
    """Unique attachment names: ``report.pdf``, ``report-1.pdf``; generated ones for parts
    without a name: ``attachment-1.pdf``, ``message-1.eml``."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._unnamed = 0
        self._messages = 0

    def take(self, name: str, content_type: str) -> str:
        if not name:
            self._unnamed += 1
            extension = _MIME_TYPES.guess_extension(content_type) or ".bin"
            name = f"attachment-{self._unnamed}{extension}"
        return self._unique(name)

    def nested(self, name: str) -> str:
        if not name:
            self._messages += 1
            name = f"message-{self._messages}.eml"
        return self._unique(name)

    def _unique(self, name: str) -> str:
        stem, ext = os.path.splitext(name)
        candidate, counter = name, 0
        while candidate.lower() in self._taken:  # case-insensitive: think of Windows shares
            counter += 1
            candidate = f"{stem}-{counter}{ext}"
        self._taken.add(candidate.lower())
        return candidate


# ----------------------------------------------------------------------------- nested mails


class _RawHeaderPolicy(Compat32):
    """Writes headers exactly as they were read (no refolding), so that a nested mail comes
    out as it went in, and a signature on it still verifies."""

    def fold_binary(self, name: str, value: str) -> bytes:
        if not isinstance(value, str):  # a Header object set by code, not read from the wire
            return super().fold_binary(name, value)  # type: ignore[unreachable]
        return f"{name}: {value}{self.linesep}".encode("utf-8", "surrogateescape")


def _subject(message: Message) -> str:
    """A nested mail's subject, decoded (its headers were left raw: see _RawHeaderPolicy)."""
    for name, value in message.raw_items():
        if name.lower() == "subject":
            subject = _unfold(str(value))
            if not subject.isascii():  # raw 8-bit bytes, as the parser left them
                subject = subject.encode("ascii", "surrogateescape").decode("utf-8", "replace")
            return decode_words(subject)[0]
    return ""


class _TolerantGenerator(BytesGenerator):
    """Writes text the stdlib already turned into str (a multipart that lost its boundary
    comes back with U+FFFD for 8-bit bytes) as UTF-8 instead of failing on it."""

    def write(self, s: str) -> None:
        if not s.isascii():
            s = s.encode("utf-8", "surrogateescape").decode("ascii", "surrogateescape")
        super().write(s)


def _flatten(message: Message, linesep: str) -> bytes:
    buffer = BytesIO()
    policy = _RawHeaderPolicy(linesep=linesep)
    _TolerantGenerator(buffer, mangle_from_=False, policy=policy).flatten(message, unixfrom=False)
    return buffer.getvalue()


def _unfold(value: str) -> str:
    return _FOLD.sub("", value).replace("\r", "").replace("\n", "").strip()
