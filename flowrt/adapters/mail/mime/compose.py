"""Exchange -> mail bytes: what a ``receiver mail`` sends.

:class:`MailComposer` compiles the receiver's templates once; :meth:`MailComposer.compose`
renders them for one exchange and returns an :class:`OutgoingMail`: the envelope (sender,
recipients) and the complete RFC 5322 message, serialized once with CRLF line endings, ready
for SMTP DATA (every retry sends these same bytes) or for an ``.eml`` file.

The receiver defines the mail. Of the exchange's headers only those the flow set with
``set header`` are written (not what the incoming mail brought, such as Received); the
receiver's own headers (From, To, Subject...) always come from its settings, and
``X-Flowrt-Message-Id`` ties the mail to its MPL entry. Values that come from the message never
reach the headers with a line break in them (header injection): that is an error.

Speed: the stdlib ``email`` package defines the bytes (its SMTP policy folds and encodes the
headers, its generator writes the MIME structure), but going through it costs about 750 µs a
mail, mostly in parsing the same From/To addresses again and again. So the common shapes are
written directly: addresses are parsed once per distinct text (a literal ``from``/``to`` once
per receiver), header lines that fit on one line are written as the policy would write them,
part headers that depend only on the receiver's settings are made once by the package and
reused, and bodies are encoded with ``base64``/``binascii``. Whatever is not plainly one of
those shapes (a long or non-ASCII header, a quoted display name, an RFC 2231 file name...) is
still made by the package, piece by piece, and a test compares the bytes of both ways over many
generated mails (``tests/mime/test_mime_out_fast.py``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import re
from collections.abc import Callable, Iterable
from email.generator import BytesGenerator
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, Policy
from email.utils import format_datetime, make_msgid
from io import BytesIO
from typing import Any

from flowrt.adapters.mail.mime import smime
from flowrt.adapters.mail.model import Receiver
from flowrt.dsl.model import Pos, Ref, Template
from flowrt.engine.exchange import Attachment, Exchange
from flowrt.engine.expressions import Value, compile_template
from flowrt.engine.steps.set import RECEIVER_HEADERS
from flowrt.errors import MessagingException

__all__ = ["MailComposer", "OutgoingMail"]

_MAX_LINE = 998  # RFC 5322 2.1.1 / RFC 2045 2.7: the longest line 7bit and 8bit may carry
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# CR and LF, and what str.splitlines() also breaks at: email.header.Header would start a new
# header line at a vertical tab or form feed just as at a line feed.
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_CHARSET_PARAM = re.compile(r'charset="?([A-Za-z0-9_.:-]+)', re.IGNORECASE)
_ADDRESS_LITERAL = re.compile(r"\[[A-Za-z0-9.:]+\]")
# Bytes quoted-printable writes as they are: printable ASCII (except '='), tab, line feed.
_QP_PLAIN = bytes([0x09, 0x0A, *range(0x20, 0x3D), *range(0x3E, 0x7F)])
_INJECTION_HINT = (
    "a value taken from the message carries CR or LF; check where it comes from, or replace "
    "it with a set step before the receiver"
)

# What the fast pieces recognise (anything else goes through the email package):
_FOLD_AT: int = SMTP.max_line_length or 78  # a header line up to this long is written as it is
_CACHE_SIZE = 256  # entries per cache of parsed addresses and folded lines
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
# addr-spec, or a display name of plain words and <addr-spec>: what needs no quoting
_SIMPLE_MAILBOX = re.compile(
    rf"(?:({_ATEXT}(?: {_ATEXT})*) <)?({_DOT_ATOM})@([A-Za-z0-9.-]+)(?(1)>)"
)
_MESSAGE_ID = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces
_PARAM_VALUE = re.compile(r"[!#-\[\]-~]+(?: [!#-\[\]-~]+)*")  # the same without " and \
# The line breaks the generator writes as CRLF (email.generator.NLCRE, on bytes)
_NLCRE = re.compile(rb"\r\n|\r|\n")


@dataclasses.dataclass(frozen=True)
class OutgoingMail:
    """One mail to send: the SMTP envelope and the message bytes (CRLF line endings)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


class _Addresses:
    """The checked addresses of a setting, and the text a header writes for them; ``simple``
    when that text is plain ASCII words (nothing quoted or encoded)."""

    __slots__ = ("addresses", "simple", "text")

    def __init__(self, addresses: list[Address], text: str, *, simple: bool) -> None:
        self.addresses = addresses
        self.text = text
        self.simple = simple


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def _message_id(domain: str) -> str:
    return make_msgid(domain=domain)


class MailComposer:
    """Builds the mails of one receiver. ``keystore`` (a :class:`~flowrt.security.Keystore`
    or a :class:`~flowrt.security.TenantSecurity`) is needed only to ``sign`` or ``encrypt``.

    ``clock`` and ``make_message_id`` exist for tests and ``flowrt simulate``: with fixed
    ones, equal exchanges give equal bytes.
    """

    def __init__(
        self,
        receiver: Receiver,
        *,
        keystore: object | None = None,
        clock: Callable[[], dt.datetime] = _now,
        make_message_id: Callable[[str], str] = _message_id,
    ) -> None:
        self.receiver = receiver
        self._keystore = keystore
        self._clock = clock
        self._make_message_id = make_message_id
        pos = receiver.pos
        self._from = _compile_all([receiver.from_])
        self._to = _compile_all(receiver.to)
        self._cc = _compile_all(receiver.cc)
        self._bcc = _compile_all(receiver.bcc)
        self._subject = compile_template(receiver.subject or _ref("header", "Subject", pos))
        self._body = compile_template(receiver.body or _ref("body", "", pos))
        self._attach = [
            (spec, compile_template(spec.name), _content_source(spec.source, spec.source_name))
            for spec in receiver.attach
        ]
        # False: every piece goes through the email package, as the fast pieces are checked
        # against in the tests.
        self._fast = True
        self._parsed: dict[tuple[str, str], _Addresses] = {}  # (setting, text) -> addresses
        self._folds: dict[tuple[str, str], bytes] = {}  # (header, value) -> folded line
        self._body_heads: dict[str, tuple[bytes, str]] = {}  # cte -> (part head, charset)
        self._part_heads: dict[tuple[str, str | None, str, bool], bytes] = {}
        self._mixed_heads: dict[int, tuple[bytes, bytes]] = {}  # see _mixed_head
        self._parse_literal("from", [receiver.from_])
        self._parse_literal("to", receiver.to)
        self._parse_literal("cc", receiver.cc)
        self._parse_literal("bcc", receiver.bcc)

    # -- the one public operation

    def compose(self, exchange: Exchange) -> OutgoingMail:
        """Render the receiver's settings for ``exchange`` and serialize the mail.

        Raises :class:`MessagingException` (not retryable: the same message fails the same
        way) for an empty or invalid address, a subject or name with a line break, a body the
        charset cannot hold, or an S/MIME key that cannot be used.
        """
        sender = self._addresses("from", self._from, exchange, required=True)
        if len(sender.addresses) != 1:
            shown = ", ".join(a.addr_spec for a in sender.addresses)
            raise self._error(f"from must be one address, not {len(sender.addresses)}: {shown!r}")
        to = self._addresses("to", self._to, exchange, required=True)
        cc = self._addresses("cc", self._cc, exchange, required=False)
        bcc = self._addresses("bcc", self._bcc, exchange, required=False)
        subject = self._no_line_break("subject", self._subject(exchange))
        now = self._clock()
        first = sender.addresses[0]
        domain = first.domain.strip("[]")
        message_id = self._no_line_break("Message-ID", self._make_message_id(domain))
        if self._fast:
            entity = self._entity_bytes(exchange, message_id)
        else:
            entity = _serialize(self._entity(exchange, message_id))
        entity = self._secure(entity, now)
        headers = self._headers(sender, to, cc, subject, now, message_id, exchange)
        recipients = [*to.addresses, *cc.addresses, *bcc.addresses]
        return OutgoingMail(
            sender=first.addr_spec,
            recipients=_unique(a.addr_spec for a in recipients),
            data=headers + entity,
        )

    # -- addresses

    def _addresses(
        self, setting: str, templates: list[_Compiled], exchange: Exchange, *, required: bool
    ) -> _Addresses:
        """The addresses of one setting. In ``from`` and ``to`` each entry must give an
        address; in ``cc`` and ``bcc`` an entry that renders empty (``${header.Cc}`` of a
        mail without Cc) is left out."""
        rendered: list[str] = []
        for source, template in templates:
            value = self._no_line_break(setting, template(exchange)).strip()
            if not value and required:
                raise self._error(f"{setting} {source} is empty for this message")
            if value:
                rendered.append(value)
        # Parsed as one list: the DSL splits literal text at commas, which would cut a quoted
        # display name such as "Doe, John" <j@example.com> in two.
        text = ", ".join(rendered)
        found = self._parsed.get((setting, text)) if self._fast else None
        if found is None:
            found = self._parse_checked(setting, text)
            if self._fast:
                if len(self._parsed) >= _CACHE_SIZE:
                    self._parsed.clear()
                self._parsed[(setting, text)] = found
        if not found.addresses and required:
            raise self._error(f"{setting} has no address: {text!r}")
        return found

    def _parse_literal(self, setting: str, templates: Iterable[Template]) -> None:
        """Parse a setting whose entries are all literal once, now (an error is left for
        :meth:`compose` to raise, with its message)."""
        templates = list(templates)
        if not all(t.is_literal for t in templates):
            return
        text = ", ".join(v for v in (t.literal.strip() for t in templates) if v)
        if not text or _LINE_BREAK.search(text):
            return
        with contextlib.suppress(MessagingException):
            self._parsed[(setting, text)] = self._parse_checked(setting, text)

    def _parse_checked(self, setting: str, text: str) -> _Addresses:
        """The addresses of ``text``, checked: the plain forms (``a@example.com``, ``Name
        <a@example.com>``) directly, anything else by the stdlib's parser."""
        if self._fast:
            simple = _simple_addresses(text)
            if simple is not None:
                return simple
        addresses = [self._checked(setting, a, text) for a in self._parse_list(setting, text)]
        return _Addresses(addresses, ", ".join(str(a) for a in addresses), simple=False)

    def _parse_list(self, setting: str, text: str) -> list[Address]:
        """Parse with the stdlib's RFC 5322 parser; any defect makes the list invalid."""
        if not text:
            return []
        try:
            header: Any = SMTP.header_factory(setting, text)
            addresses = list(header.addresses)
            defects = [d for d in header.defects if "local-part" not in str(d).lower()]
        except Exception as exc:  # the parser still raises on some inputs ("a@")
            raise self._error(f"{setting}: invalid address list {text!r}") from exc
        if defects:
            raise self._error(f"{setting}: invalid address list {text!r}: {defects[0]}")
        return addresses

    def _checked(self, setting: str, address: Address, text: str) -> Address:
        if not address.username or not address.domain:
            raise self._error(f"{setting}: invalid address {address.addr_spec!r} in {text!r}")
        if not address.username.isascii():
            raise self._error(
                f"{setting}: the address {address.addr_spec!r} has a non-ASCII local part, "
                "which needs SMTPUTF8; flowrt sends ASCII addresses only"
            )
        domain = _ascii_domain(address.domain)
        if domain is None:
            raise self._error(f"{setting}: invalid domain in {address.addr_spec!r} in {text!r}")
        try:
            return Address(address.display_name, address.username, domain)
        except ValueError as exc:
            raise self._error(f"{setting}: invalid address {address.addr_spec!r}: {exc}") from None

    # -- the MIME entity (body and attachments, before S/MIME)

    def _entity(self, exchange: Exchange, message_id: str) -> EmailMessage:
        """The entity as the email package builds it (see :meth:`_entity_bytes`)."""
        body = self._body_part(self._body(exchange))
        attachments = [self._attachment_part(a) for a in self._attachments(exchange)]
        if not attachments:
            return body
        mixed = EmailMessage(policy=SMTP)
        mixed["Content-Type"] = "multipart/mixed"
        mixed.set_boundary(_boundary(message_id, [body, *attachments]))
        for part in (body, *attachments):
            mixed.attach(part)
        return mixed

    def _entity_bytes(self, exchange: Exchange, message_id: str) -> bytes:
        """The entity's bytes, written directly: what ``BytesGenerator`` makes of
        :meth:`_entity`. Parts are (bytes, the text a boundary must not occur in)."""
        data, cte = self._body_data(self._body(exchange))
        head, charset = self._body_head(cte)
        body = head + _lines_crlf(_payload(data, cte))
        check = None if cte in ("base64", "quoted-printable") else _payload_text(data, charset)
        parts = [(body, check)]
        parts.extend(self._attachment_bytes(a) for a in self._attachments(exchange))
        if len(parts) == 1:
            return body
        boundary = _pick_boundary(message_id, [text for _, text in parts if text is not None])
        marker = boundary.encode("ascii")
        separator = b"\r\n--" + marker + b"\r\n"
        return b"".join(
            [
                self._mixed_head(boundary),
                separator[2:],
                separator.join([part for part, _ in parts]),
                b"\r\n--" + marker + b"--\r\n",
            ]
        )

    def _mixed_head(self, boundary: str) -> bytes:
        """The multipart/mixed headers and blank line. Made by the package once per length
        of boundary and kept as the halves around it: a boundary is hex digits and
        underscores, so only its length decides how the line is folded."""
        marker = boundary.encode("ascii")
        halves = self._mixed_heads.get(len(marker))
        if halves is not None:
            return halves[0] + marker + halves[1]
        mixed = EmailMessage(policy=SMTP)
        mixed["Content-Type"] = "multipart/mixed"
        mixed.set_boundary(boundary)
        head = _head_bytes(mixed)
        start, found, end = head.partition(marker)
        if found and marker not in end:  # else (split up as RFC 2231 sections) made each time
            self._mixed_heads[len(marker)] = (start, end)
        return head

    def _body_data(self, text: str) -> tuple[bytes, str]:
        """The body in the receiver's charset and its transfer encoding (checked)."""
        data = self._encode_text(_normalize_newlines(text))
        cte = self.receiver.transfer_encoding
        if cte == "auto":
            cte = _choose_encoding(data)
        else:
            self._check_encoding(cte, data)
        return data, cte

    def _body_head(self, cte: str) -> tuple[bytes, str]:
        """The body part's headers and blank line for ``cte`` (made once by the package), and
        the charset its payload reads as."""
        found = self._body_heads.get(cte)
        if found is None:
            part = self._body_mime(cte)
            found = self._body_heads[cte] = (_head_bytes(part), part.get_content_charset("ascii"))
        return found

    def _body_mime(self, cte: str) -> EmailMessage:
        part = EmailMessage(policy=SMTP)
        part["Content-Type"] = self.receiver.body_type
        part.set_param("charset", self.receiver.charset)
        part["Content-Transfer-Encoding"] = cte
        return part

    def _body_part(self, text: str) -> EmailMessage:
        data, cte = self._body_data(text)
        part = self._body_mime(cte)
        part.set_payload(_transfer_encode(data, cte))
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
        if cte in ("7bit", "8bit") and (_longest_line(data) > _MAX_LINE or b"\0" in data):
            raise self._error(
                f"transfer-encoding {cte} cannot carry the body: it has lines longer than "
                f"{_MAX_LINE} bytes or NUL bytes",
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
        return found

    def _attachment_meta(self, attachment: Attachment) -> tuple[str, str, str | None]:
        """(name, content type, charset) as the attachment part declares them."""
        name = self._no_line_break("attachment name", attachment.name).strip()
        full_type = self._no_line_break("attachment type", attachment.content_type)
        content_type, _, params = full_type.partition(";")
        content_type = content_type.strip().lower()
        if not _MIME_TYPE.fullmatch(content_type) or _is_structure(content_type):
            content_type = "application/octet-stream"
        charset = _CHARSET_PARAM.search(params)
        if charset and content_type.startswith("text/"):
            return name, content_type, charset.group(1)
        return name, content_type, None

    def _attachment_mime(
        self, name: str, content_type: str, charset: str | None, embedded: bool
    ) -> EmailMessage:
        part = EmailMessage(policy=SMTP)
        part["Content-Type"] = content_type
        if charset is not None:
            part.set_param("charset", charset)
        # Both names: old clients read Content-Type name, the rest the disposition. The
        # policy writes a non-ASCII name in RFC 2231 form.
        part["Content-Disposition"] = "attachment"
        if name:
            part.set_param("name", name)
            part.set_param("filename", name, header="Content-Disposition")
        part["Content-Transfer-Encoding"] = "7bit" if embedded else "base64"
        return part

    def _attachment_part(self, attachment: Attachment) -> EmailMessage:
        name, content_type, charset = self._attachment_meta(attachment)
        embedded = _embeddable(attachment.data) if content_type == "message/rfc822" else None
        part = self._attachment_mime(name, content_type, charset, embedded is not None)
        if embedded is not None:
            # A mail inside a mail should not be base64 (RFC 2046 5.2.1): embed it as it is.
            part.set_payload(embedded.decode("ascii"))
        else:
            encoded = base64.encodebytes(attachment.data).decode("ascii")
            if content_type.startswith("message/"):  # the generator writes these unconverted
                encoded = encoded.replace("\n", "\r\n")
            part.set_payload(encoded)
        return part

    def _attachment_bytes(self, attachment: Attachment) -> tuple[bytes, str | None]:
        """An attachment part's bytes, and its text when a boundary must be checked against
        it (see :meth:`_attachment_part`: the same part, written directly)."""
        name, content_type, charset = self._attachment_meta(attachment)
        embedded = _embeddable(attachment.data) if content_type == "message/rfc822" else None
        key = (content_type, charset, name, embedded is not None)
        head = self._part_heads.get(key)
        if head is None:
            head = _simple_part_head(*key)
            if head is None:
                head = _head_bytes(
                    self._attachment_mime(name, content_type, charset, embedded is not None)
                )
                if len(self._part_heads) >= _CACHE_SIZE:
                    self._part_heads.clear()
                self._part_heads[key] = head
        if embedded is not None:
            return head + embedded, embedded.decode("ascii")
        return head + _base64_crlf(attachment.data), None

    # -- headers

    def _headers(
        self,
        sender: _Addresses,
        to: _Addresses,
        cc: _Addresses,
        subject: str,
        now: dt.datetime,
        message_id: str,
        exchange: Exchange,
    ) -> bytes:
        trace = self._no_line_break("X-Flowrt-Message-Id", exchange.message_id)
        flow = [
            (name, value)
            for name, value in exchange.headers
            if name.lower() in exchange.flow_headers and name.lower() not in RECEIVER_HEADERS
        ]
        fast = self._fast and isinstance(now, dt.datetime)
        if fast:
            counts: dict[str, int] = {}
            for name, value in flow:
                self._no_line_break(f"header {name}", value)
                lower = name.lower()
                counts[lower] = counts.get(lower, 0) + 1
                limit = _max_count(lower)
                if not _HEADER_NAME.fullmatch(name) or (limit and counts[lower] > limit):
                    fast = False  # the package refuses it (or writes it its own way)
                    break
        if not fast:
            return self._headers_email(sender, to, cc, subject, now, message_id, trace, flow)
        charset = self.receiver.charset
        lines = [
            self._address_line("From", sender),
            self._address_line("To", to),
        ]
        if cc.addresses:
            lines.append(self._address_line("Cc", cc))
        lines.append(_encoded_line("Subject", subject, charset))
        lines.append(b"Date: " + format_datetime(now).encode("ascii") + b"\r\n")
        line = _plain_line("Message-ID", message_id) if _MESSAGE_ID.fullmatch(message_id) else None
        lines.append(line or _folded("Message-ID", message_id))
        lines.append(b"MIME-Version: 1.0\r\n")
        lines.append(
            _plain_line("X-Flowrt-Message-Id", trace) or _folded("X-Flowrt-Message-Id", trace)
        )
        lines.extend(_encoded_line(name, value, charset) for name, value in flow)
        return b"".join(lines)

    def _address_line(self, name: str, found: _Addresses) -> bytes:
        if found.simple:
            line = _plain_line(name, found.text)
            if line is not None:
                return line
        key = (name, found.text)
        line = self._folds.get(key)
        if line is None:
            value = found.addresses[0] if name == "From" else found.addresses
            line = _folded(name, value)
            if len(self._folds) >= _CACHE_SIZE:
                self._folds.clear()
            self._folds[key] = line
        return line

    def _headers_email(
        self,
        sender: _Addresses,
        to: _Addresses,
        cc: _Addresses,
        subject: str,
        now: dt.datetime,
        message_id: str,
        trace: str,
        flow: list[tuple[str, str]],
    ) -> bytes:
        """The header block as an EmailMessage holds it and the SMTP policy folds it."""
        head = EmailMessage(policy=SMTP)
        head["From"] = sender.addresses[0]
        head["To"] = to.addresses
        if cc.addresses:
            head["Cc"] = cc.addresses
        head["Subject"] = _EncodedHeader("Subject", subject, self.receiver.charset)
        head["Date"] = now
        head["Message-ID"] = message_id
        head["MIME-Version"] = "1.0"
        head["X-Flowrt-Message-Id"] = trace
        for name, value in flow:
            safe = self._no_line_break(f"header {name}", value)
            head[name] = _EncodedHeader(name, safe, self.receiver.charset)
        # Written by the same policy the generator uses; the entity (Content-Type and the
        # rest) follows, so the header block ends where the entity's begins.
        return b"".join(SMTP.fold_binary(name, value) for name, value in head.raw_items())

    # -- S/MIME

    def _secure(self, entity: bytes, now: dt.datetime) -> bytes:
        receiver = self.receiver
        if receiver.sign is None and receiver.encrypt is None:
            return entity
        if self._keystore is None:
            raise self._error(
                "S/MIME needs the tenant keystore, and none was given to the composer",
                hint="run the flow within a tenant (--tenant DIR or FLOWRT_HOME)",
            )
        keystore = smime.open_keystore(self._keystore)
        now_utc = now.astimezone(dt.UTC)
        if receiver.sign is not None:
            entity = smime.sign(entity, receiver.sign, keystore, now=now_utc)
        if receiver.encrypt is not None:
            entity = smime.encrypt(entity, receiver.encrypt, keystore, now=now_utc)
        return entity

    # -- errors

    def _no_line_break(self, what: str, value: str) -> str:
        if _LINE_BREAK.search(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise self._error(
                f"{what} {shown!r} contains a line break; "
                "refusing to write it into the mail headers",
                hint=_INJECTION_HINT,
            )
        return value

    def _error(self, message: str, *, hint: str | None = None) -> MessagingException:
        return MessagingException(
            f"receiver '{self.receiver.name}': {message}", hint=hint, retryable=False
        )


# ----------------------------------------------------------------------------- helpers


def _ref(kind: str, name: str, pos: Pos) -> Template:
    """The template a setting has when the flow leaves it out (``${header.Subject}``...)."""
    ref = Ref(kind, name, pos)  # type: ignore[arg-type]
    return Template((ref,), "${" + str(ref) + "}", pos)


_Compiled = tuple[str, Value]  # (the template as written, for messages; the closure)


def _compile_all(templates: Iterable[Template]) -> list[_Compiled]:
    return [(t.source, compile_template(t)) for t in templates]


ContentSource = Callable[[Exchange], bytes | str | None]


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


def _ascii_domain(domain: str) -> str | None:
    """The domain as it can be written in headers and the envelope: IDNA for non-ASCII."""
    if _ADDRESS_LITERAL.fullmatch(domain):
        return domain
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return None
    return ascii_domain if _HOSTNAME.fullmatch(ascii_domain) else None


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    """Each recipient once (domains compare without case; local parts may not)."""
    seen: dict[str, str] = {}
    for address in addresses:
        local, _, domain = address.rpartition("@")
        seen.setdefault(f"{local}@{domain.lower()}", address)
    return tuple(seen.values())


def _is_structure(content_type: str) -> bool:
    """multipart/* and message/delivery-status describe MIME structure that the generator
    rebuilds from parts; an attachment only has bytes, which go as application/octet-stream.
    (message/rfc822 is embedded as it is.)"""
    return content_type.startswith("multipart/") or content_type == "message/delivery-status"


def _embeddable(mail: bytes) -> bytes | None:
    """A nested mail with CRLF line endings, or None when 7bit cannot carry it: then it goes
    base64, which every common client reads anyway. (8bit would do for 8-bit text, but the
    stdlib generator writes message/* payloads as ASCII only.)"""
    data = re.sub(rb"\r?\n", b"\r\n", mail)
    fits = data.isascii() and b"\0" not in data and _longest_line(data) <= _MAX_LINE
    return data if fits else None


def _normalize_newlines(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if not text or text.endswith("\n") else text + "\n"


def _longest_line(data: bytes) -> int:
    return max(map(len, data.split(b"\n")), default=0)


def _choose_encoding(data: bytes) -> str:
    """auto: 7bit for ASCII with lines within the limit; quoted-printable for text that is
    mostly ASCII (stays readable; at most a third of the bytes escaped), else base64."""
    if data.isascii() and _longest_line(data) <= _MAX_LINE and b"\0" not in data:
        return "7bit"
    escaped = len(data.translate(None, _QP_PLAIN))
    return "quoted-printable" if escaped * 3 <= len(data) else "base64"


def _transfer_encode(data: bytes, cte: str) -> str:
    """The body as the payload string the generator writes ("\\n" becomes CRLF)."""
    return _payload(data, cte).decode("ascii", "surrogateescape")


def _payload(data: bytes, cte: str) -> bytes:
    """The body in its transfer encoding, line breaks as they are."""
    if cte == "base64":  # text is base64-encoded in its canonical form, with CRLF
        return base64.encodebytes(data.replace(b"\n", b"\r\n"))
    if cte == "quoted-printable":
        return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return data  # 7bit, 8bit: the bytes as they are


def _boundary(message_id: str, parts: list[EmailMessage]) -> str:
    """The boundary of a multipart entity of ``parts`` (see :func:`_pick_boundary`)."""
    texts = [
        str(p.get_payload())
        for p in parts
        if p.get("Content-Transfer-Encoding") not in ("base64", "quoted-printable")
    ]
    return _pick_boundary(message_id, texts)


def _pick_boundary(message_id: str, texts: list[str]) -> str:
    """A boundary derived from the Message-ID (unique per mail, fixed when a test fixes the
    ID). '=_' occurs neither in base64 nor in quoted-printable; ``texts``, the parts in other
    encodings, are checked."""
    boundary = "=_flowrt_" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
    while any(boundary in text for text in texts):
        boundary += "_"
    return boundary


def _serialize(entity: EmailMessage) -> bytes:
    buffer = BytesIO()
    BytesGenerator(buffer, policy=SMTP).flatten(entity)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- fast pieces
# Each writes what the email package writes for one piece, for the shapes it recognises.


def _simple_addresses(text: str) -> _Addresses | None:
    """``a@example.com, Some Name <b@example.org>``: addresses that need no parser (what
    ``_parse_list`` and ``_checked`` make of them), or None for anything else."""
    if "=?" in text:  # the parser decodes encoded words, even in odd places
        return None
    addresses: list[Address] = []
    if text:
        for item in text.split(","):
            match = _SIMPLE_MAILBOX.fullmatch(item.strip(" \t"))
            if match is None:
                return None
            display, local, domain = match.groups()
            if _ascii_domain(domain) != domain:
                return None
            addresses.append(Address(display or "", local, domain))
    return _Addresses(addresses, ", ".join(str(a) for a in addresses), simple=True)


def _plain_line(name: str, value: str) -> bytes | None:
    """``Name: value`` CRLF, as the SMTP policy writes a header that fits on one line and
    holds printable ASCII words only (so nothing is encoded or refolded), or None."""
    if (
        len(name) + 2 + len(value) <= _FOLD_AT
        and "=?" not in value
        and _PLAIN_VALUE.fullmatch(value)
    ):
        return f"{name}: {value}\r\n".encode("ascii")
    return None


def _folded(name: str, value: object) -> bytes:
    """One header as an ``EmailMessage`` stores it (``msg[name] = value``) and the SMTP
    policy writes it."""
    return SMTP.fold_binary(*SMTP.header_store_parse(name, value))


def _encoded_line(name: str, value: str, charset: str) -> bytes:
    """A header encoded in the receiver's charset (see :class:`_EncodedHeader`)."""
    return _plain_line(name, value) or _folded(name, _EncodedHeader(name, value, charset))


@functools.cache
def _max_count(lower_name: str) -> int | None:
    """How often the policy lets a message hold this header (None: any number)."""
    limit: int | None = SMTP.header_max_count(lower_name)
    return limit


def _head_bytes(part: EmailMessage) -> bytes:
    """A part's headers and the blank line after them, as ``BytesGenerator`` writes them."""
    return b"".join(SMTP.fold_binary(name, value) for name, value in part.raw_items()) + b"\r\n"


def _simple_part_head(
    content_type: str, charset: str | None, name: str, embedded: bool
) -> bytes | None:
    """An attachment part's headers (see ``MailComposer._attachment_mime``) when each fits
    on a line and the name needs no quoting or encoding, else None."""
    value = content_type if charset is None else f'{content_type}; charset="{charset}"'
    disposition = "attachment"
    if name:
        if "=?" in name or not _PARAM_VALUE.fullmatch(name):
            return None
        value += f'; name="{name}"'
        disposition += f'; filename="{name}"'
    first = _plain_line("Content-Type", value)
    second = _plain_line("Content-Disposition", disposition)
    if first is None or second is None:
        return None
    cte = b"7bit" if embedded else b"base64"
    return first + second + b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n"


def _lines_crlf(data: bytes) -> bytes:
    """A payload with its line breaks as the generator writes them: CRLF."""
    return data.replace(b"\n", b"\r\n") if b"\r" not in data else _NLCRE.sub(b"\r\n", data)


def _base64_crlf(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _payload_text(data: bytes, charset: str) -> str:
    """What ``get_payload()`` gives for a 7bit or 8bit body part: its text, read in the
    part's charset when it has 8-bit bytes."""
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("ascii", "replace")


class _EncodedHeader:
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
