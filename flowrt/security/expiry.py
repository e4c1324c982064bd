"""How a keystore entry is listed, with its expiry: shared by ``flowrt keystore list`` and the
monitor's keystore view, so both say the same. Never anything of a private key."""

from __future__ import annotations

import datetime
from typing import Any

from flowrt.security.certificates import issuer, subject
from flowrt.security.keystore import Entry, valid_until

__all__ = ["SOON", "entry_row", "expiry_status"]

SOON = datetime.timedelta(days=30)
"""An entry ending within this is "expiring"."""


def expiry_status(
    until: datetime.datetime, now: datetime.datetime, soon: datetime.timedelta = SOON
) -> str:
    """``EXPIRED``, ``expires in 12d`` / ``expires in 5h`` within ``soon``, else empty."""
    if until <= now:
        return "EXPIRED"
    left = until - now
    if left <= soon:
        return f"expires in {left.days}d" if left.days else f"expires in {left.seconds // 3600}h"
    return ""


def entry_row(entry: Entry, now: datetime.datetime) -> dict[str, Any]:
    """The JSON row of ``flowrt keystore list --format json``."""
    until = valid_until(entry)
    return {
        "alias": entry.alias,
        "type": entry.kind,
        "owner": entry.owner,
        "valid_until": until.isoformat(),
        "expired": until <= now,
        "expires_within_30_days": now < until <= now + SOON,
        "status": expiry_status(until, now, SOON),
        "subject": subject(entry.certificate),
        "issuer": issuer(entry.certificate),
    }
