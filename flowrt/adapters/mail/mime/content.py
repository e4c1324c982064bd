"""The MIME entity of an outgoing mail: its text, HTML, inline parts and attachments.

What the receiver's settings make of an exchange (the composition policy of the content;
:mod:`~flowrt.adapters.mail.mime.compose` adds the header block, S/MIME and the envelope):

- ``body-type auto`` (the default) mirrors the mail that was read: text and HTML go as
  multipart/alternative, the HTML with its inline parts (``cid:`` images) as
  multipart/related, an HTML-only mail as text/html, a text's ``format=flowed`` is kept.
  Any other ``body-type`` writes the body alone under that type (as flowrt always did).
- The HTML is the ``html`` setting; left out, it is the mail's HTML alternative when the
  body is the mail's (``${body}``), and none when the flow writes a body of its own.
- ``attachments from-message`` adds the exchange's attachments (with their content type
  parameters, disposition, names and Content-IDs), and the inline parts when no HTML is
  sent; ``attachments original`` adds the mail as it was read, as message/rfc822.
- A signed, report or encrypted mail whose content the flow left as it was goes out
  byte-exact (see :mod:`~flowrt.adapters.mail.mime.sealed`), so that its signature verifies.

The bytes are what the stdlib ``email`` package would write; the common pieces are written
directly with :mod:`~flowrt.adapters.mail.mime.wire`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from email.message import EmailMessage, Message
from email.policy import SMTP
from typing import NamedTuple

from flowrt.adapters.mail.mime.pieces import Base64, join_pieces
from flowrt.adapters.mail.mime.wire import (
    MAX_LINE,
    choose_encoding,
    embeddable,
    encode_payload,
    head_bytes,
    lines_crlf,
    longest_line,
    normalize_newlines,
    parts_boundary,
    payload_text,
    pick_boundary,
    serialize,
    simple_part_head,
    transfer_encode,
)
from flowrt.adapters.mail.model import Receiver
from flowrt.dsl.model import Pos, Ref, Template
from flowrt.engine.exchange import Attachment, Exchange, Sealed
from flowrt.engine.expressions import Value, compile_template
from flowrt.errors import MessagingException

__all__ = ["Base64", "Content", "join_pieces"]

_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CACHE_SIZE = 256  # entries per cache of part heads
_ORIGINAL_NAME = "original.eml"


# a part's bytes, as pieces joined once for the whole mail; and the text a boundary must not
# occur in (base64 cannot hold one: its pieces are not in it)
_Part = tuple[list["bytes | Base64"], str | None]
_Params = tuple[tuple[str, str], ...]
ContentSource = Callable[[Exchange], bytes | str | None]


class _Meta(NamedTuple):
    """An attachment part's head as it is written."""

    name: str
    content_type: str
    params: _Params
    disposition: str
    content_id: str


class Content:
    """Writes the entities of one receiver; ``error`` makes the receiver's exceptions and
    ``no_line_break`` refuses values that would break out of a header."""

    def __init__(
        self,
        receiver: Receiver,
        error: Callable[..., MessagingException],
        no_line_break: Callable[[str, str], str],
    ) -> None:
        self.receiver = receiver
        self._error = error
        self._no_line_break = no_line_break
        self._mirror = receiver.body_type == "auto"
        self._own_body = receiver.body is not None and not _is_body(receiver.body)
        self._body = compile_template(receiver.body or _ref("body", "", receiver.pos))
        self._html: Value | None = None
        if receiver.html is not None:
            self._html = compile_template(receiver.html)
        elif self._mirror and not self._own_body:
            self._html = _source_html
        self._attach = [
            (spec, compile_template(spec.name), _content_source(spec.source, spec.source_name))
            for spec in receiver.attach
        ]
        # False: every piece goes through the email package, as the fast pieces are checked
        # against in the tests.
        self.fast = True
        # (cte, type, params) -> (part head, charset)
        self._text_heads: dict[tuple[str, str, _Params], tuple[bytes, str]] = {}
        self.part_heads: dict[tuple[_Meta, bool], bytes] = {}
        self._multipart_heads: dict[tuple[str, int], tuple[bytes, bytes]] = {}

    def entity(self, exchange: Exchange, message_id: str) -> bytes:
        """The entity's bytes (Content-* headers, blank line, body), before S/MIME."""
        return join_pieces(self.entity_pieces(exchange, message_id))

    def entity_pieces(self, exchange: Exchange, message_id: str) -> list[bytes | Base64]:
        """The entity as pieces for :func:`join_pieces`, which writes a large attachment's
        base64 straight into the mail's bytes (the one copy of it)."""
        sealed = exchange.sealed
        if sealed is not None and self._passes(exchange, sealed):
            return [sealed.entity]
        texts = self._texts(exchange)
        if not self.fast and self._plain_shape(exchange, *texts):
            return [serialize(self._entity(exchange, message_id, texts[0], texts[1]))]
        return self._entity_bytes(exchange, message_id, *texts)

    def _passes(self, exchange: Exchange, sealed: Sealed) -> bool:
        """Whether the mail goes out as it came: the receiver mirrors the source, adds
        nothing, and the flow changed neither the text, the HTML nor the parts."""
        receiver = self.receiver
        return (
            self._mirror
            and not self._own_body
            and receiver.html is None
            and not self._attach
            and not receiver.attach_original
            and exchange.attachment is None
            and (receiver.attachments_from_message or not sealed.attachments)
            and sealed.unchanged(exchange)
        )

    def _plain_shape(
        self, exchange: Exchange, text_type: str, text: str, html: str, params: _Params
    ) -> bool:
        """One text part and plain attachments: what :meth:`_entity` builds."""
        return (
            not html
            and not params
            and not exchange.related
            and not self.receiver.attach_original
            and all(_simple(a) for a in self._attachments(exchange))
        )

    # -- the email package's way, for the plain shape (the fast pieces are checked against it)

    def _entity(
        self, exchange: Exchange, message_id: str, text_type: str, text: str
    ) -> EmailMessage:
        body = self._body_part(text, text_type)
        attachments = [self._attachment_part(a) for a in self._attachments(exchange)]
        if not attachments:
            return body
        mixed = EmailMessage(policy=SMTP)
        mixed["Content-Type"] = "multipart/mixed"
        mixed.set_boundary(parts_boundary(message_id, [body, *attachments]))
        for part in (body, *attachments):
            mixed.attach(part)
        return mixed

    def _body_part(self, text: str, text_type: str) -> EmailMessage:
        data, cte = self._text_data(text)
        part = self._text_mime(cte, text_type, ())
        part.set_payload(transfer_encode(data, cte))
        return part

    def _attachment_part(self, attachment: Attachment) -> EmailMessage:
        meta = self._attachment_meta(attachment)
        embedded = _embedded(meta.content_type, attachment)
        part = self._attachment_mime(meta, embedded is not None)
        if embedded is not None:
            # A mail inside a mail should not be base64 (RFC 2046 5.2.1): embed it as it is.
            part.set_payload(embedded.decode("ascii"))
        else:
            encoded = base64.encodebytes(attachment.data).decode("ascii")
            if meta.content_type.startswith("message/"):  # the generator writes these as is
                encoded = encoded.replace("\n", "\r\n")
            part.set_payload(encoded)
        return part

    # -- written directly

    def _entity_bytes(
        self,
        exchange: Exchange,
        message_id: str,
        text_type: str,
        text: str,
        html: str,
        params: _Params,
    ) -> list[bytes | Base64]:
        """The entity's pieces: the text (and HTML) part, then the attachments."""
        related = exchange.related if html or text_type == "text/html" else []
        if html and text.strip():
            html_part = self._with_related(
                self._text_part(html, "text/html", ()), exchange, message_id
            )
            content = self._multipart(
                "alternative",
                message_id + "/alternative",
                [self._text_part(text, text_type, params), html_part],
            )
        elif html:
            content = self._with_related(
                self._text_part(html, "text/html", ()), exchange, message_id
            )
        elif related:
            content = self._with_related(
                self._text_part(text, text_type, params), exchange, message_id
            )
        else:
            content = self._text_part(text, text_type, params)
        attachments = self._attachments(exchange)
        if self.receiver.attachments_from_message and not related:
            attachments.extend(exchange.related)  # inline parts nothing shows: kept, attached
        if not attachments:
            return content[0]
        parts = [content, *(self._attachment_bytes(a) for a in attachments)]
        return self._multipart("mixed", message_id, parts)[0]

    def _texts(self, exchange: Exchange) -> tuple[str, str, str, _Params]:
        """(type of the text part, its text, the HTML alternative or "", text parameters)."""
        text = self._body(exchange)
        if not self._mirror:
            return self.receiver.body_type, text, "", ()
        if self._own_body:
            html = self._html(exchange) if self._html is not None else ""
            return "text/plain", text, html, ()
        if exchange.content_type == "text/html" and exchange.html is None:
            return "text/html", text, "", ()  # an HTML-only mail stays one
        html = self._html(exchange) if self._html is not None else ""
        return "text/plain", text, html, _format_params(exchange.body_params)

    def _with_related(self, html: _Part, exchange: Exchange, message_id: str) -> _Part:
        if not exchange.related:
            return html
        inline = [self._attachment_bytes(a) for a in exchange.related]
        return self._multipart("related", message_id + "/related", [html, *inline])

    def _multipart(self, subtype: str, seed: str, parts: list[_Part]) -> _Part:
        boundary = pick_boundary(seed, [text for _, text in parts if text is not None])
        marker = boundary.encode("ascii")
        separator = b"\r\n--" + marker + b"\r\n"
        pieces: list[bytes | Base64] = [self._multipart_head(subtype, boundary), separator[2:]]
        for index, (part, _) in enumerate(parts):
            if index:
                pieces.append(separator)
            pieces.extend(part)
        pieces.append(b"\r\n--" + marker + b"--\r\n")
        text = b"".join(p for p in pieces if isinstance(p, bytes)).decode("latin-1")
        return pieces, text

    def _multipart_head(self, subtype: str, boundary: str) -> bytes:
        """A multipart's headers and blank line. Made by the package once per subtype and
        length of boundary and kept as the halves around it: a boundary is hex digits and
        underscores, so only its length decides how the line is folded."""
        marker = boundary.encode("ascii")
        halves = self._multipart_heads.get((subtype, len(marker)))
        if halves is not None:
            return halves[0] + marker + halves[1]
        mixed = EmailMessage(policy=SMTP)
        mixed["Content-Type"] = f"multipart/{subtype}"
        mixed.set_boundary(boundary)
        head = head_bytes(mixed)
        start, found, end = head.partition(marker)
        if found and marker not in end:  # else (split up as RFC 2231 sections) made each time
            self._multipart_heads[(subtype, len(marker))] = (start, end)
        return head

    # -- text parts

    def _text_part(self, text: str, content_type: str, params: _Params) -> _Part:
        data, cte = self._text_data(text)
        key = (cte, content_type, params)
        found = self._text_heads.get(key)
        if found is None:
            part = self._text_mime(cte, content_type, params)
            found = (head_bytes(part), part.get_content_charset("ascii"))
            if len(self._text_heads) >= _CACHE_SIZE:
                self._text_heads.clear()
            self._text_heads[key] = found
        head, charset = found
        check = None if cte in ("base64", "quoted-printable") else payload_text(data, charset)
        return [head + lines_crlf(encode_payload(data, cte))], check

    def _text_data(self, text: str) -> tuple[bytes, str]:
        """The text in the receiver's charset and its transfer encoding (checked)."""
        data = self._encode_text(normalize_newlines(text))
        cte = self.receiver.transfer_encoding
        if cte == "auto":
            cte = choose_encoding(data)
        else:
            self._check_encoding(cte, data)
        return data, cte

    def _text_mime(self, cte: str, content_type: str, params: _Params) -> EmailMessage:
        part = EmailMessage(policy=SMTP)
        part["Content-Type"] = content_type
        part.set_param("charset", self.receiver.charset)
        for key, value in params:
            part.set_param(key, value)
        part["Content-Transfer-Encoding"] = cte
        return part

    def _encode_text(self, text: str) -> bytes:
        charset = self.receiver.charset
        try:
            return text.encode(charset)
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end]
            raise self._error(
                f"the body cannot be written in {charset}: {bad!r} at position {exc.start} "
                f"has no {charset} form",
                hint="use charset utf-8 in the receiver, or remove the character",
            ) from None

    def _check_encoding(self, cte: str, data: bytes) -> None:
        if cte == "7bit" and not data.isascii():
            raise self._error(
                "transfer-encoding 7bit cannot carry the body: it has non-ASCII bytes",
                hint="use transfer-encoding auto or quoted-printable",
            )
        if cte in ("7bit", "8bit") and (longest_line(data) > MAX_LINE or b"\0" in data):
            raise self._error(
                f"transfer-encoding {cte} cannot carry the body: it has lines longer than "
                f"{MAX_LINE} bytes or NUL bytes",
                hint="use transfer-encoding auto, quoted-printable or base64",
            )

    # -- attachments

    def _attachments(self, exchange: Exchange) -> list[Attachment]:
        found: list[Attachment] = []
        if self.receiver.attachments_from_message:
            single = exchange.attachment
            found.extend([single] if single is not None else exchange.attachments)
        for spec, name, source in self._attach:
            content = source(exchange)
            if content is None:
                raise self._error(f"attach: the {spec.source} {spec.source_name!r} is not set")
            content_type = spec.content_type
            if isinstance(content, str):  # text goes as UTF-8, and says so
                content = content.encode("utf-8")
                if content_type.startswith("text/"):
                    content_type += "; charset=utf-8"
            found.append(Attachment(name(exchange), content_type, content))
        if self.receiver.attach_original:
            if exchange.original is None:
                raise self._error(
                    "attachments original: this message was not read from a mail",
                    hint="attach the original only in flows whose sender reads mail",
                )
            found.append(Attachment(_ORIGINAL_NAME, "message/rfc822", exchange.original))
        return found

    def _attachment_meta(self, attachment: Attachment) -> _Meta:
        """How the attachment part declares itself."""
        name = self._no_line_break("attachment name", attachment.name).strip()
        full_type = self._no_line_break("attachment type", attachment.content_type)
        content_type, _, rest = full_type.partition(";")
        content_type = content_type.strip().lower()
        if not _MIME_TYPE.fullmatch(content_type) or content_type.startswith("multipart/"):
            # an attachment only has bytes; a multipart needs its parts: generic bytes
            content_type = "application/octet-stream"
        params = _params(rest, content_type) if rest.strip() else ()
        disposition = "inline" if attachment.disposition == "inline" else "attachment"
        content_id = self._no_line_break("Content-ID", attachment.content_id).strip().strip("<>")
        return _Meta(name, content_type, params, disposition, content_id)

    def _attachment_mime(self, meta: _Meta, embedded: bool) -> EmailMessage:
        part = EmailMessage(policy=SMTP)
        part["Content-Type"] = meta.content_type
        for key, value in meta.params:
            part.set_param(key, value)
        # Both names: old clients read Content-Type name, the rest the disposition. The
        # policy writes a non-ASCII name in RFC 2231 form.
        part["Content-Disposition"] = meta.disposition
        if meta.name:
            part.set_param("name", meta.name)
            part.set_param("filename", meta.name, header="Content-Disposition")
        if meta.content_id:
            part["Content-ID"] = f"<{meta.content_id}>"
        part["Content-Transfer-Encoding"] = "7bit" if embedded else "base64"
        return part

    def _attachment_bytes(self, attachment: Attachment) -> _Part:
        """An attachment part's bytes, and its text when a boundary must be checked against
        it (see :meth:`_attachment_part`: the same part, written directly)."""
        meta = self._attachment_meta(attachment)
        embedded = _embedded(meta.content_type, attachment)
        key = (meta, embedded is not None)
        head = self.part_heads.get(key)
        if head is None:
            head = _simple_head(meta, embedded is not None)
            if head is None:
                head = head_bytes(self._attachment_mime(meta, embedded is not None))
                if len(self.part_heads) >= _CACHE_SIZE:
                    self.part_heads.clear()
                self.part_heads[key] = head
        if embedded is not None:
            return [head + embedded], embedded.decode("ascii")
        return [head, Base64(attachment.source)], None


# ----------------------------------------------------------------------------- helpers


def _ref(kind: str, name: str, pos: Pos) -> Template:
    """The template a setting has when the flow leaves it out (``${body}``...)."""
    ref = Ref(kind, name, pos)  # type: ignore[arg-type]
    return Template((ref,), "${" + str(ref) + "}", pos)


def _is_body(template: Template) -> bool:
    """``"${body}"``: the mail's own text, written out as the default does."""
    parts = template.parts
    return len(parts) == 1 and isinstance(parts[0], Ref) and str(parts[0]) == "body"


def _source_html(exchange: Exchange) -> str:
    """The mail's HTML alternative (not the body of an HTML-only mail: that is the body)."""
    return exchange.html_text if exchange.html is not None else ""


def _content_source(source: str, name: str) -> ContentSource:
    """Reads an ``attach`` line's content: bytes as they are, anything else as text."""

    def read(exchange: Exchange) -> bytes | str | None:
        if source == "header":
            return exchange.headers.get(name)
        value = exchange.properties.get(name)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, Attachment):
            return value.data
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        return str(value)

    return read


def _params(rest: str, content_type: str) -> _Params:
    """A content type's parameters worth writing: not the name (written from the
    attachment's name) nor a boundary; a charset only on text (where it means something)."""
    holder = Message()
    holder["Content-Type"] = content_type + ";" + rest
    found: list[tuple[str, str]] = []
    try:
        params = holder.get_params(None, "content-type") or []
    except (TypeError, ValueError, LookupError, UnicodeError):
        return ()
    for key, value in params[1:]:
        key = key.lower()
        if not isinstance(value, str) or not _TOKEN.fullmatch(key):
            continue
        if key in ("name", "boundary") or (
            key == "charset" and not content_type.startswith("text/")
        ):
            continue
        if "\r" in value or "\n" in value or not value:
            continue
        if key == "charset":
            found.insert(0, (key, value.strip('"')))  # first, where flowrt always wrote it
        else:
            found.append((key, value))
    return tuple(found)


def _format_params(text: str) -> _Params:
    """The text part's ``format=flowed`` and ``delsp`` as the reader kept them."""
    return _params(text, "text/plain") if text else ()


def _simple(attachment: Attachment) -> bool:
    """What the package writes from a payload string (a delivery status it wants as parts)."""
    return (
        attachment.disposition == "attachment"
        and not attachment.content_id
        and attachment.mime_type != "message/delivery-status"
    )


def _simple_head(meta: _Meta, embedded: bool) -> bytes | None:
    if meta.disposition != "attachment" or meta.content_id:
        return None
    if meta.params and (len(meta.params) > 1 or meta.params[0][0] != "charset"):
        return None
    charset = meta.params[0][1] if meta.params else None
    return simple_part_head(meta.content_type, charset, meta.name, embedded)


def _embedded(content_type: str, attachment: Attachment) -> bytes | None:
    """A message/* part (a mail, a delivery status) as it is, when 7bit can carry it."""
    return embeddable(attachment.data) if content_type.startswith("message/") else None
