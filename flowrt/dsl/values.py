"""Reading setting values: durations, addresses, times, words from a fixed set.

A setting line is ``NAME value*``. Its spec reads the values through a :class:`ValueReader`,
which raises :class:`SpecError` pointing at the exact value that is wrong and saying, in words,
what was expected there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import re
from collections.abc import Sequence

from flowrt.dsl.model import Pos, Template
from flowrt.dsl.template import SpecError, parse_template, unescape

__all__ = [
    "RawValue",
    "SpecError",
    "ValueReader",
    "did_you_mean",
    "duration_seconds",
    "format_duration",
    "parse_duration",
    "split_host_port",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_HELP = "a number and a unit (ms, s, m, h, d), e.g. 30s or 5m"
MAX_DURATION = dt.timedelta(days=3650)  # longer than any wait a flow or a command means
MAX_INTEGER = 2**31 - 1  # counts and limits; a larger one is a typo, not a setting
MAX_BACKOFF = 100.0


def duration_seconds(text: str) -> float | None:
    """The seconds ``text`` says (``inf`` when too many digits); None when not a duration."""
    pos = 0
    total = 0.0
    if not text:
        return None
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        return None
    return total


def parse_duration(text: str) -> dt.timedelta | None:
    """``30s``, ``5m``, ``1h30m``, ``500ms``, ``7d``; None when it is not a duration or is
    longer than :data:`MAX_DURATION`."""
    total = duration_seconds(text)
    if total is None or not total <= MAX_DURATION.total_seconds():
        return None
    return dt.timedelta(seconds=total)


def format_duration(value: dt.timedelta) -> str:
    seconds = value.total_seconds()
    if seconds == 0:
        return "0"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address. Raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("the address is empty")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("expected ':port' after ']'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 address
    elif ":" in text:
        host, port_text = text.split(":", 1)
    else:
        host, port_text = text, ""
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"bad host name {host!r}")
    if port_text == "":
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port {port_text!r}: expected a number from 1 to 65535")
    return host, int(port_text)


def close_match(word: str, choices: Sequence[str]) -> list[str]:
    """The one choice that ``word`` is most likely a misspelling of, if any."""
    return difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = close_match(word, choices)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(choices: Sequence[str]) -> str:
    if len(choices) == 1:
        return f"'{choices[0]}'"
    return ", ".join(f"'{c}'" for c in choices[:-1]) + f" or '{choices[-1]}'"


@dataclasses.dataclass(frozen=True)
class RawValue:
    """One value as written: ``text`` is unescaped, ``raw`` is the token as in the file."""

    text: str
    quoted: bool
    raw: str
    pos: Pos

    @classmethod
    def from_token(cls, raw: str, pos: Pos) -> RawValue:
        if raw.startswith('"'):
            return cls(unescape(raw[1:-1]), True, raw, pos)
        return cls(raw, False, raw, pos)

    def shown(self) -> str:
        return self.raw


class ValueReader:
    """A cursor over one setting's values. Each method reads one value or raises SpecError."""

    def __init__(self, setting: str, values: Sequence[RawValue], pos: Pos) -> None:
        self.setting = setting
        self.values = list(values)
        self.pos = pos  # the setting name's position
        self.index = 0

    # -- cursor
    def peek(self) -> RawValue | None:
        return self.values[self.index] if self.index < len(self.values) else None

    def at_end(self) -> bool:
        return self.index >= len(self.values)

    def _next(self, what: str) -> RawValue:
        value = self.peek()
        if value is None:
            last = self.values[-1].pos if self.values else self.pos
            raise SpecError(
                f"{self.setting}: expected {what} here, found the end of the line", last
            )
        self.index += 1
        return value

    def fail(self, value: RawValue, message: str, code: str = "bad-value") -> SpecError:
        return SpecError(f"{self.setting}: {message}", value.pos, code)

    def end(self) -> None:
        value = self.peek()
        if value is not None:
            raise self.fail(value, f"unexpected {value.shown()} at the end of the setting")

    # -- kinds of value
    def word(self, choices: Sequence[str], what: str | None = None) -> str:
        value = self._next(what or one_of(choices))
        if value.text in choices:
            return value.text
        raise self.fail(
            value,
            f"expected {what or one_of(choices)}, got {value.shown()}"
            + did_you_mean(value.text, choices),
        )

    def choice(self, choices: Sequence[str]) -> str:
        """A setting whose only value is one word from ``choices``."""
        value = self.word(choices)
        self.end()
        return value

    def flag(self) -> bool:
        """A switch: written alone it is on; ``yes``/``no`` say so explicitly."""
        if self.at_end():
            return True
        return self.choice(["yes", "no", "true", "false"]) in ("yes", "true")

    def keyword(self, word: str) -> None:
        self.word([word])

    def maybe_keyword(self, word: str) -> bool:
        value = self.peek()
        if value is not None and not value.quoted and value.text == word:
            self.index += 1
            return True
        return False

    def string(self, what: str = "a quoted string") -> RawValue:
        return self._next(what)

    def template(self, what: str = "a quoted string") -> Template:
        value = self._next(what)
        if not value.quoted:
            return Template((value.text,), value.raw, value.pos)
        return parse_template(value.raw, value.pos)

    def integer(
        self,
        what: str = "a whole number",
        *,
        minimum: int | None = None,
        maximum: int = MAX_INTEGER,
    ) -> int:
        value = self._next(what)
        if not re.fullmatch(r"-?\d+", value.text):
            raise self.fail(value, f"expected {what}, got {value.shown()}")
        if len(value.text.lstrip("-")) > len(str(maximum)):  # int() of 5,000 digits refuses
            raise self.fail(
                value, f"must be at most {maximum}, got {value.shown()}", "out-of-range"
            )
        number = int(value.text)
        if minimum is not None and number < minimum:
            raise self.fail(value, f"must be at least {minimum}, got {number}", "out-of-range")
        if number > maximum:
            raise self.fail(value, f"must be at most {maximum}, got {number}", "out-of-range")
        return number

    def number(self, what: str = "a number") -> float:
        value = self._next(what)
        try:
            number = float(value.text)
        except ValueError:
            raise self.fail(value, f"expected {what}, got {value.shown()}") from None
        if not math.isfinite(number):
            raise self.fail(value, f"expected {what}, got {value.shown()}", "out-of-range")
        return number

    def duration(
        self, *, above: dt.timedelta | None = None, below: dt.timedelta | None = None
    ) -> dt.timedelta:
        value = self._next(f"a duration, {DURATION_HELP}")
        seconds = duration_seconds(value.text)
        if seconds is not None and not seconds <= MAX_DURATION.total_seconds():
            limit = (
                f"less than {format_duration(below)}"
                if below is not None
                else f"at most {format_duration(MAX_DURATION)}"
            )
            raise self.fail(value, f"must be {limit}, got {value.shown()}", "out-of-range")
        parsed = parse_duration(value.text)
        if parsed is None:
            raise self.fail(value, f"bad duration {value.shown()}: expected {DURATION_HELP}")
        if above is not None and parsed <= above:
            raise self.fail(
                value,
                f"must be more than {format_duration(above)}, got {value.text}",
                "out-of-range",
            )
        if below is not None and parsed >= below:
            raise self.fail(
                value,
                f"must be less than {format_duration(below)}, got {value.text}",
                "out-of-range",
            )
        return parsed

    def time_of_day(self) -> dt.time:
        value = self._next("a time of day as HH:MM")
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.text)
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise self.fail(value, f"bad time {value.shown()}: expected HH:MM from 00:00 to 23:59")
        return dt.time(int(match.group(1)), int(match.group(2)))

    def address_list(self, what: str = "one or more addresses") -> tuple[Template, ...]:
        """A comma-separated list, in one string or over several values."""
        items: list[Template] = []
        while not self.at_end():
            template = self.template(what)
            items.extend(_split_commas(template))
        if not items:
            raise SpecError(f"{self.setting}: expected {what}", self.pos)
        return tuple(items)


def _split_commas(template: Template) -> list[Template]:
    """Split a template on commas that are in its literal text, keeping expressions whole."""
    pieces: list[list[object]] = [[]]
    for part in template.parts:
        if isinstance(part, str):
            chunks = part.split(",")
            pieces[-1].append(chunks[0])
            for chunk in chunks[1:]:
                pieces.append([chunk])
        else:
            pieces[-1].append(part)
    result = []
    for piece in pieces:
        parts = [p for p in piece if p != ""]
        if parts and isinstance(parts[0], str):
            parts[0] = parts[0].lstrip()
        if parts and isinstance(parts[-1], str):
            parts[-1] = parts[-1].rstrip()
        parts = [p for p in parts if p != ""]
        if parts:
            result.append(Template(tuple(parts), template.source, template.pos))  # type: ignore[arg-type]
    return result
