"""Whether a text names a host: an IP address or a DNS name."""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")


def is_host(host: str) -> bool:
    """An IPv4 or IPv6 address, or a name of at most 253 characters whose dot-separated
    labels are letters, digits, ``_`` and ``-`` (not first or last); one trailing dot is
    allowed."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if len(host) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in host.rstrip(".").split("."))
