"""What the IMAP and POP3 clients share: how one is started over a socket we connected
(:func:`flowrt.net.connect`, direct or through the SOCKS5 connector), and the bounded opening
of the stream over that socket, with implicit TLS when asked for."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from flowrt.errors import SocketTimeoutException

__all__ = ["StartClient", "open_over"]

T = TypeVar("T")
C_co = TypeVar("C_co", covariant=True)


class StartClient(Protocol[C_co]):
    """A client's ``start`` (:meth:`ImapClient.start`, :meth:`Pop3Client.start`): speak the
    protocol over ``sock`` (implicit TLS first when ``tls`` is given), greeting read; ssl
    errors are raised as they are, for the caller to explain."""

    def __call__(
        self,
        sock: socket.socket,
        *,
        host: str,
        port: int,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> Awaitable[C_co]: ...


async def open_over(
    sock: socket.socket,
    opener: Callable[..., Awaitable[T]],
    *,
    host: str,
    timeout: float,
    tls: ssl.SSLContext | None,
) -> T:
    """``opener(sock=sock, ssl=..., ...)`` (``asyncio.open_connection`` or a loop's
    ``create_connection`` with its protocol), with implicit TLS for ``host`` when ``tls`` is
    given, all within ``timeout``. On any failure ``sock`` is closed; running out of time is
    SocketTimeoutException."""
    try:
        async with asyncio.timeout(timeout):
            return await opener(
                sock=sock,
                ssl=tls,
                server_hostname=host if tls else None,
                ssl_handshake_timeout=timeout if tls else None,
            )
    except TimeoutError as exc:
        sock.close()
        raise SocketTimeoutException(f"TLS handshake timed out after {timeout:g}s") from exc
    except BaseException:
        sock.close()
        raise
