"""Does a port speak TLS at once? Asked only after a plain client waited in vain for a
greeting: an implicit-TLS port (465, 993, 995) waits for the client's TLS hello while the
client waits for the server's greeting, so both sides are silent and the failure looks like a
dead server. One bounded handshake on a second connection tells the two apart, and lets the
hint name the protection to use instead of "the server did not answer"."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from flowrt.net.connect import connect
from flowrt.net.route import ProxyRoute

__all__ = ["speaks_tls_at_once"]

PROBE_CAP = 5.0  # seconds: the probe only explains a failure that is reported anyway


async def speaks_tls_at_once(
    host: str, port: int, *, route: ProxyRoute | None, timeout: float
) -> bool:
    """True when ``host:port`` completes a TLS handshake right after connecting (no
    certificate validation: only the protocol is asked, nothing is sent after it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    limit = min(timeout, PROBE_CAP)
    try:
        async with asyncio.timeout(limit):
            sock = await connect(host, port, route=route, timeout=limit)
            try:
                _, writer = await asyncio.open_connection(
                    sock=sock, ssl=context, server_hostname=host, ssl_handshake_timeout=limit
                )
            except BaseException:
                sock.close()
                raise
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return True
    except Exception:  # refused, silent, not TLS: not an implicit-TLS port
        return False
