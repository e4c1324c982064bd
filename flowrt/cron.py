"""Cron expressions (``poll cron "0 7-18 * * 1-5"``): checking one and finding its next run.

croniter does the calendar work. Its own errors name neither the field nor the allowed
range ("[0 7-18 * * 8] is not acceptable"), so :func:`problem` checks each field on its own
first and says which one is wrong. Only the classic five fields are accepted: croniter's
optional seconds and year columns would make ``"0 7 * * 1"`` and a six-field text differ
in meaning in a way nobody reading a flow expects.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import CroniterBadDateError, croniter

__all__ = ["FIELDS", "next_run", "problem"]

#: the five fields, in order, with what each accepts
FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-7 or sun-sat, 0 and 7 are Sunday"),
)

# far enough to find "29 2 *" style dates (leap years), near enough to stay fast
_SEARCH_YEARS = 8


def problem(expression: str) -> str | None:
    """What is wrong with ``expression`` (None when it is a valid five-field expression
    that matches at least one date)."""
    fields = expression.split()
    if len(fields) != len(FIELDS):
        return (
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}"
        )
    for index, (text, (name, allowed)) in enumerate(zip(fields, FIELDS, strict=True)):
        alone = ["*"] * len(FIELDS)
        alone[index] = text
        if not croniter.is_valid(" ".join(alone)):
            return f"{name} {text!r} is not valid (allowed: {allowed}; *, lists, ranges, /steps)"
    start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    try:
        nxt = croniter(" ".join(fields), start).get_next(dt.datetime)
    except (CroniterBadDateError, ValueError):
        nxt = None
    if nxt is None or nxt.year - start.year > _SEARCH_YEARS:
        return "it never matches a date (e.g. day 30 of February)"
    return None


def next_run(expression: str, tz: str | None, after: dt.datetime) -> dt.datetime:
    """The first time after ``after`` (aware) that ``expression`` matches, read in ``tz``
    (UTC when None), as an aware UTC datetime."""
    zone = zoneinfo.ZoneInfo(tz) if tz else dt.UTC
    local = after.astimezone(zone)
    nxt: dt.datetime = croniter(expression, local).get_next(dt.datetime)
    return nxt.astimezone(dt.UTC)
