"""Smaller read buffers for asyncio's TLS connections, in a process that holds many.

asyncio gives every TLS connection a 256 KiB read buffer (``SSLProtocol.max_size``), filled
with zeros when the connection is made, so it is resident from the start: a runtime with
500 IDLE flows and 500 polling flows keeping their connection held 250 MB in these buffers
alone. A TLS record carries at most 16 KiB, so 64 KiB still takes several records per read;
a large fetch only makes more, smaller reads.
"""

from __future__ import annotations

import asyncio.sslproto

__all__ = ["TLS_READ_BUFFER", "use_small_tls_buffers"]

TLS_READ_BUFFER = 64 * 1024


def use_small_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """TLS connections made from now on in this process read into ``size`` bytes."""
    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    if protocol is not None and isinstance(getattr(protocol, "max_size", None), int):
        protocol.max_size = min(protocol.max_size, size)
