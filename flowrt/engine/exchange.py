"""The exchange: one message as it travels through a flow.

Headers are case-insensitive and may repeat (mail headers do); properties are the flow's own
variables; the body is bytes with a charset; attachments keep their names and types.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

from flowrt.mpl.ids import new_message_id as time_ordered_id

__all__ = ["Attachment", "Exchange", "Headers", "new_message_id"]


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
        expression such as ``${header.Received}`` sees.

        On the per-message path, so it lowercases only names of the right length: header
        names are ASCII, and two ASCII names of different lengths never match.
        """
        key = name.lower()
        size = len(key)
        found = [v for k, v in self._items if len(k) == size and k.lower() == key]
        if len(found) == 1:
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


@dataclasses.dataclass
class Attachment:
    name: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


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

    def __post_init__(self) -> None:
        if not self.correlation_id:
            self.correlation_id = self.message_id

    @property
    def text(self) -> str:
        """The body as text in its charset; undecodable bytes become U+FFFD, never an error."""
        try:
            return self.body.decode(self.charset or "utf-8", errors="replace")
        except LookupError:  # an unknown charset name
            return self.body.decode("utf-8", errors="replace")

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
        clone.flow_headers = set(self.flow_headers)
        return clone
