"""Time helpers shared by the MPL store, its rendering and the ``flowrt mpl`` commands.

The store keeps times as float seconds since the epoch (what :func:`time.time` returns, so the
recorder never builds a ``datetime`` on the hot path); everything a person or a JSON consumer
sees is an aware UTC ``datetime`` or its ISO text with a ``Z``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "format_duration",
    "from_epoch",
    "from_epoch_us",
    "iso",
    "parse_duration",
    "parse_instant",
    "to_epoch",
]

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def from_epoch(seconds: float) -> datetime:
    """An aware UTC datetime from epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def from_epoch_us(micros: int) -> datetime:
    """An aware UTC datetime from integer epoch microseconds (exact, no float rounding)."""
    return _EPOCH + timedelta(microseconds=micros)


def to_epoch(moment: datetime) -> float:
    """Epoch seconds from a datetime; a naive datetime is taken as UTC (as the CLI shows it)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(moment: datetime | None) -> str | None:
    """``2024-05-01T10:00:00.123456Z``: fixed width, so JSON output is stable and sortable."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_duration(text: str) -> timedelta:
    """``500ms``, ``45s``, ``30m``, ``2h``, ``7d``, ``1w`` -> timedelta (> 0).

    Raises ValueError with a sentence fit for a usage error.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use a number and a unit: ms, s, m, h, d, w")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return timedelta(seconds=seconds)


def parse_instant(text: str, *, now: datetime | None = None) -> datetime:
    """A duration meaning "that long ago" (``30m``, ``7d``) or an ISO timestamp.

    An ISO timestamp without an offset is UTC, because that is how ``flowrt mpl`` prints times.
    Raises ValueError with a sentence fit for a usage error.
    """
    if _DURATION.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO timestamp "
            "(2024-05-01T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def format_duration(value: timedelta) -> str:
    """The shortest exact ``Nd`` / ``Nh`` / ``Nm`` / ``Ns`` form, so ``30d`` round-trips."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"
