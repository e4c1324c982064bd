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
generated mails (``tests/mime/test_mime_out_fast.py``). The pieces are written by
:mod:`~flowrt.adapters.mail.mime.wire`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Iterable
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any

from flowrt.adapters.mail.mime import smime
from flowrt.adapters.mail.mime.content import Base64, Content
from flowrt.adapters.mail.mime.pieces import MailPieces
from flowrt.adapters.mail.mime.wire import (
    EncodedHeader,
    encoded_line,
    folded,
    max_count,
    plain_line,
)
from flowrt.adapters.mail.model import Receiver
from flowrt.dsl.model import Pos, Ref, Template
from flowrt.engine.exchange import Exchange
from flowrt.engine.expressions import Value, compile_template
from flowrt.engine.steps.set import RECEIVER_HEADERS
from flowrt.errors import MessagingException

__all__ = ["MailComposer", "OutgoingMail"]

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
_INJECTION_HINT = (
    "a value taken from the message carries CR or LF; check where it comes from, or replace "
    "it with a set step before the receiver"
)

# What the fast pieces recognise (anything else goes through the email package):
_CACHE_SIZE = 256  # entries per cache of parsed addresses and folded lines
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
# addr-spec, or a display name of plain words and <addr-spec>: what needs no quoting
_SIMPLE_MAILBOX = re.compile(
    rf"(?:({_ATEXT}(?: {_ATEXT})*) <)?({_DOT_ATOM})@([A-Za-z0-9.-]+)(?(1)>)"
)
_MESSAGE_ID = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")
_HEADER_NAME = re.compile(r"[!-9;-~]+")


@dataclasses.dataclass(frozen=True)
class OutgoingMail:
    """One mail to send: the SMTP envelope and the message (CRLF line endings), as pieces
    the SMTP writer encodes as it sends them (see :mod:`~flowrt.adapters.mail.mime.pieces`)."""

    sender: str
    recipients: tuple[str, ...]
    message: MailPieces

    @property
    def data(self) -> bytes:
        """The message as one bytes object (for a large mail, a copy made now)."""
        return bytes(self.message)


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
        self._content = Content(receiver, self._error, self._no_line_break)
        self._parsed: dict[tuple[str, str], _Addresses] = {}  # (setting, text) -> addresses
        self._folds: dict[tuple[str, str], bytes] = {}  # (header, value) -> folded line
        self._parse_literal("from", [receiver.from_])
        self._parse_literal("to", receiver.to)
        self._parse_literal("cc", receiver.cc)
        self._parse_literal("bcc", receiver.bcc)

    @property
    def _fast(self) -> bool:
        """False: every piece goes through the email package, as the fast pieces are checked
        against in the tests."""
        return self._content.fast

    @_fast.setter
    def _fast(self, value: bool) -> None:
        self._content.fast = value

    @property
    def _part_heads(self) -> dict[Any, bytes]:
        return self._content.part_heads

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
        receiver = self.receiver
        entity: list[bytes | Base64]
        if receiver.sign is None and receiver.encrypt is None:
            entity = self._content.entity_pieces(exchange, message_id)
        else:
            entity = [self._secure(self._content.entity(exchange, message_id), now)]
        headers = self._headers(sender, to, cc, subject, now, message_id, exchange)
        recipients = [*to.addresses, *cc.addresses, *bcc.addresses]
        return OutgoingMail(
            sender=first.addr_spec,
            recipients=_unique(a.addr_spec for a in recipients),
            message=MailPieces([headers, *entity]),
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
                limit = max_count(lower)
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
        lines.append(encoded_line("Subject", subject, charset))
        lines.append(b"Date: " + format_datetime(now).encode("ascii") + b"\r\n")
        line = plain_line("Message-ID", message_id) if _MESSAGE_ID.fullmatch(message_id) else None
        lines.append(line or folded("Message-ID", message_id))
        lines.append(b"MIME-Version: 1.0\r\n")
        lines.append(
            plain_line("X-Flowrt-Message-Id", trace) or folded("X-Flowrt-Message-Id", trace)
        )
        lines.extend(encoded_line(name, value, charset) for name, value in flow)
        return b"".join(lines)

    def _address_line(self, name: str, found: _Addresses) -> bytes:
        if found.simple:
            line = plain_line(name, found.text)
            if line is not None:
                return line
        key = (name, found.text)
        line = self._folds.get(key)
        if line is None:
            value = found.addresses[0] if name == "From" else found.addresses
            line = folded(name, value)
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
        head["Subject"] = EncodedHeader("Subject", subject, self.receiver.charset)
        head["Date"] = now
        head["Message-ID"] = message_id
        head["MIME-Version"] = "1.0"
        head["X-Flowrt-Message-Id"] = trace
        for name, value in flow:
            safe = self._no_line_break(f"header {name}", value)
            head[name] = EncodedHeader(name, safe, self.receiver.charset)
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
