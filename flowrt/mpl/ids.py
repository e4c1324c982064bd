"""Message IDs for the MPL: time-ordered GUIDs (UUID version 7, RFC 9562).

Why not ``uuid4``: the MPL keeps a unique index on the message ID. Random IDs land on random
pages of that index, so every batch of writes dirties about one page per message, and recording
slows down as the log grows (about 19 µs instead of 7 µs per entry at 2·10^5 entries, measured
in ``benchmarks/mpl.py``). A UUIDv7 starts with the time in milliseconds, so new IDs are
appended at the end of the index, and it is still a GUID of the usual text form.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_message_id"]

_RAND_B_MASK = (1 << 62) - 1


def new_message_id() -> str:
    """A new UUIDv7 in the canonical ``8-4-4-4-12`` hex form."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (millis & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & _RAND_B_MASK)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
