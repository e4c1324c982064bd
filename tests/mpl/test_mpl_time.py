"""Durations and instants as the CLI takes them; time-ordered message IDs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flowrt.mpl import new_message_id
from flowrt.mpl._time import format_duration, iso, parse_duration, parse_instant

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "0s", "1 day"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_instant_as_ago_or_iso() -> None:
    assert parse_instant("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_instant("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_instant("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_instant("2024-05-01 10:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)  # UTC
    with pytest.raises(ValueError, match="neither a duration"):
        parse_instant("yesterday")


def test_format_duration_round_trips() -> None:
    for text in ("30d", "12h", "90m", "45s", "500ms"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(timedelta(days=14)) == "14d"


def test_iso_is_fixed_width_utc() -> None:
    assert iso(datetime(2024, 5, 1, 10, tzinfo=UTC)) == "2024-05-01T10:00:00.000000Z"
    assert iso(None) is None


def test_message_ids_are_time_ordered_uuid7() -> None:
    ids = [new_message_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == ids[0]
    millis = [int(i.replace("-", "")[:12], 16) for i in ids]
    assert millis == sorted(millis)
