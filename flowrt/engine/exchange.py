"""The exchange: one message as it travels through a flow.

Headers are case-insensitive and may repeat (mail headers do); properties are the flow's own
variables; the body is bytes with a charset; attachments keep their names and types.

A mail's content maps onto it without loss: ``body`` is the text (or the HTML of an HTML-only
mail, with ``content_type`` text/html), ``html`` the HTML alternative, ``related`` the inline
parts the HTML shows (by ``cid:``), ``attachments`` everything else, and ``original`` the mail
as it was read. ``sealed`` holds a structure that must not be rebuilt (a signed mail, a
report) for a receiver that forwards the message unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from flowrt.mpl.ids import new_message_id as time_ordered_id

__all__ = ["Attachment", "Exchange", "Headers", "LazyContent", "Sealed", "new_message_id"]

# Fields a mail has at most once (RFC 5322 section 3.6): a second one is a mistake of the
# sender, and joining two subjects or dates would make one that neither said.
_ONCE = frozenset(
    ("subject", "date", "from", "sender", "message-id", "in-reply-to", "references", "mime-version")
)


class Headers:
    """An ordered, case-insensitive multi-map: ``get`` gives the first value, ``get_all``
    every value, ``set`` replaces all occurrences, ``add`` appends one more."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(str(k), str(v)) for k, v in items]

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        for k, v in self._items:
            if k.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k.lower() == key]

    def joined(self, name: str) -> str:
        """Every value of ``name`` joined by ", " (empty when there is none): what an
        expression such as ``${header.Received}`` sees. Of a field a mail has only once
        (Subject, Date, From...) a repeat is ignored: the first value is the one.

        On the per-message path, so it lowercases only names of the right length: header
        names are ASCII, and two ASCII names of different lengths never match.
        """
        key = name.lower()
        size = len(key)
        found = [v for k, v in self._items if len(k) == size and k.lower() == key]
        if len(found) == 1 or (found and key in _ONCE):
            return found[0]
        return ", ".join(found)

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self._items.append((name, value))

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        key = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != key]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def names(self) -> list[str]:
        seen: dict[str, str] = {}
        for k, _ in self._items:
            seen.setdefault(k.lower(), k)
        return list(seen.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        clone = Headers.__new__(Headers)
        clone._items = list(self._items)  # already (str, str) pairs: no conversion needed
        return clone


class LazyContent(Protocol):
    """Content read when it is asked for (a large attachment still in the mail's bytes)."""

    @property
    def size(self) -> int: ...

    def read(self) -> bytes:
        """The whole content."""
        ...

    def steps(self) -> Iterator[bytes]:
        """The content in order, a bounded piece at a time."""
        ...


class Attachment:
    """A file or part: ``content_type`` may carry parameters (``text/plain; charset=koi8-r``),
    ``disposition`` is ``attachment`` or ``inline``, ``content_id`` has no angle brackets.

    ``data`` may be given as :class:`LazyContent`: it is read the first time ``data`` is
    asked for; until then :attr:`source` is what writes it, a piece at a time (a forwarded
    25 MB attachment is never whole in memory)."""

    __slots__ = ("_data", "content_id", "content_type", "disposition", "name")

    def __init__(
        self,
        name: str,
        content_type: str,
        data: bytes | LazyContent,
        disposition: str = "attachment",
        content_id: str = "",
    ) -> None:
        self.name = name
        self.content_type = content_type
        self._data = data
        self.disposition = disposition
        self.content_id = content_id

    @property
    def data(self) -> bytes:
        data = self._data
        if not isinstance(data, bytes):
            data = self._data = data.read()
        return data

    @data.setter
    def data(self, value: bytes) -> None:
        self._data = value

    @property
    def source(self) -> bytes | LazyContent:
        """The content as it is held: bytes, or what reads it when asked."""
        return self._data

    @property
    def size(self) -> int:
        data = self._data
        return len(data) if isinstance(data, bytes) else data.size

    @property
    def mime_type(self) -> str:
        """The content type without parameters, lower case."""
        return self.content_type.partition(";")[0].strip().lower()

    def _key(self) -> tuple[str, str, bytes, str, str]:
        return (self.name, self.content_type, self.data, self.disposition, self.content_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attachment):
            return NotImplemented
        return self is other or self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return (
            f"Attachment(name={self.name!r}, content_type={self.content_type!r}, "
            f"data={self._data!r}, disposition={self.disposition!r}, "
            f"content_id={self.content_id!r})"
        )


@dataclasses.dataclass(frozen=True)
class Sealed:
    """A mail structure to forward byte-exact (multipart/signed, multipart/report,
    multipart/encrypted): its entity (the Content-* header lines, a blank line, the body; CRLF
    line endings) and what the exchange held when it was read, to tell whether the flow
    changed the content since."""

    content_type: str
    entity: bytes
    body: bytes
    html: bytes | None
    attachments: tuple[Attachment, ...]
    related: tuple[Attachment, ...]

    def unchanged(self, exchange: Exchange) -> bool:
        return (
            exchange.body == self.body
            and exchange.html == self.html
            and tuple(exchange.attachments) == self.attachments
            and tuple(exchange.related) == self.related
        )


def new_message_id() -> str:
    """A GUID for a new message: time-ordered (UUIDv7), because the MPL indexes message IDs
    and random ones make every write land on a random index page."""
    return time_ordered_id()


@dataclasses.dataclass
class Exchange:
    """A message in flight. ``branch`` and ``attachment`` are set on split branches."""

    body: bytes = b""
    charset: str = "utf-8"
    content_type: str = "text/plain"
    headers: Headers = dataclasses.field(default_factory=Headers)
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    attachments: list[Attachment] = dataclasses.field(default_factory=list)
    message_id: str = dataclasses.field(default_factory=new_message_id)
    correlation_id: str = ""
    created: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    flow_name: str = ""
    flow_version: str = ""
    branch: str = ""
    attachment: Attachment | None = None
    # lower-case names of the headers the flow set: receivers write these into the mail,
    # while the headers the incoming mail brought (Received, DKIM-Signature...) stay behind
    flow_headers: set[str] = dataclasses.field(default_factory=set)
    body_params: str = ""  # the text's format=flowed and delsp, to write them back
    html: bytes | None = None
    html_charset: str = "utf-8"
    related: list[Attachment] = dataclasses.field(default_factory=list)
    original: bytes | None = None
    sealed: Sealed | None = None

    def __post_init__(self) -> None:
        if not self.correlation_id:
            self.correlation_id = self.message_id

    @property
    def text(self) -> str:
        """The body as text in its charset; undecodable bytes become U+FFFD, never an error."""
        return _decode(self.body, self.charset)

    @property
    def html_text(self) -> str:
        """The HTML as text: the HTML alternative, else the body of an HTML-only message."""
        if self.html is not None:
            return _decode(self.html, self.html_charset)
        return self.text if self.content_type == "text/html" else ""

    def set_text(self, text: str) -> None:
        """Replace the body with text; the charset stays unless it cannot hold the text."""
        try:
            self.body = text.encode(self.charset or "utf-8")
        except (UnicodeEncodeError, LookupError):
            self.charset = "utf-8"
            self.body = text.encode("utf-8")

    def copy(self) -> Exchange:
        """An independent copy (same IDs): each retry and each split branch gets its own."""
        # A shallow copy of the fields, then new containers: what copy.copy does, at a
        # quarter of the cost (each retry and each split branch makes one).
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.headers = self.headers.copy()
        clone.properties = dict(self.properties)
        clone.attachments = list(self.attachments)
        clone.related = list(self.related)
        clone.flow_headers = set(self.flow_headers)
        return clone


def _decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return data.decode("utf-8", errors="replace")
