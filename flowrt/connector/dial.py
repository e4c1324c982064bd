"""Opening the connection to a mapping's internal back end, and naming why it failed.

Used by the server (to answer a CONNECT) and by ``flowrt connector check``. A failure is a
:class:`DialError` that carries the SOCKS5 reply to send, a short ``outcome`` for the log and
a precise ``reason`` for the operator. The reply codes:

* every address of the back end refused the connection: 0x05 *Connection refused* (it is up,
  but nothing listens on the port: the server is down or the port is wrong);
* the name does not resolve, the host does not answer in time, or the network says it cannot
  be reached: 0x04 *Host unreachable*. 0x03 *Network unreachable* is deliberately not used
  here: flowrt reserves it for an unknown location ID, so each code has one hint;
* a tcp-tls back end whose certificate is not trusted by the connector's truststore (or does
  not carry the expected name), or any other TLS handshake failure: 0x01 *General SOCKS server
  failure*. The back end is reachable, so "Host unreachable" would send the operator to check
  the wrong thing; the problem is the connector's own trust setup, and the precise reason
  (verification error, subject, issuer) is in the connector's log and in ``connector check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from typing import Any

from cryptography import x509

from flowrt.connector.config import Mapping, format_address
from flowrt.connector.socks5 import Reply

__all__ = [
    "READ_LIMIT",
    "Backend",
    "DialError",
    "PeerCertificate",
    "connect_socket",
    "dial",
    "peek_certificate",
]

#: StreamReader buffer limit for both sides of a relay: reads pause beyond twice this.
READ_LIMIT = 256 * 1024


@dataclasses.dataclass(frozen=True)
class PeerCertificate:
    """What the operator needs to fix trust: who the back end says it is, and who signed it."""

    subject: str
    issuer: str
    names: tuple[str, ...]
    not_after: str

    def describe(self) -> str:
        return f"subject {self.subject}, issuer {self.issuer}"


class DialError(Exception):
    """The back end could not be reached (or not trusted); ``reply`` is the SOCKS5 answer."""

    def __init__(
        self,
        reply: Reply,
        outcome: str,
        reason: str,
        *,
        certificate: PeerCertificate | None = None,
    ) -> None:
        super().__init__(reason)
        self.reply = reply
        self.outcome = outcome
        self.reason = reason
        self.certificate = certificate


@dataclasses.dataclass
class Backend:
    """An open connection to a back end: the raw socket of a ``tcp`` mapping (which the relay
    may splice), or the streams of a ``tcp-tls`` one (TLS needs a transport)."""

    sock: socket.socket | None = None
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def abort(self) -> None:
        if self.streams is not None:
            self.streams[1].transport.abort()
        if self.sock is not None:
            self.sock.close()


async def connect_socket(family: int, address: tuple[Any, ...]) -> socket.socket:
    """A connected non-blocking TCP socket (closed again if connecting fails)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Mail protocols are chatty (command, reply): Nagle would add delay per round trip.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def dial(mapping: Mapping, *, tls_context: ssl.SSLContext | None, timeout: float) -> Backend:
    """Connect to ``mapping``'s internal address (and do TLS for a tcp-tls mapping).

    The whole dial (name lookup, each address in turn, the TLS handshake) is bounded by
    ``timeout``. Addresses are tried one by one so that "every address refused" can be told
    apart from "some address unreachable", and TCP is connected before TLS starts so that a
    TLS failure is never mistaken for an unreachable host.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    host, port = mapping.internal_host, mapping.internal_port
    target = format_address(host, port)

    try:
        async with asyncio.timeout_at(deadline):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DialError(
            Reply.HOST_UNREACHABLE, "dns_failure", f"cannot resolve {host}: {exc.strerror}"
        ) from exc
    except TimeoutError:
        raise DialError(
            Reply.HOST_UNREACHABLE, "timeout", f"resolving {host} took longer than {timeout:g}s"
        ) from None

    refused: list[str] = []
    failed: list[str] = []
    sock: socket.socket | None = None
    for family, _, _, _, address in dict.fromkeys(infos):
        shown = format_address(str(address[0]), port)
        try:
            async with asyncio.timeout_at(deadline):
                sock = await connect_socket(family, address)
            break
        except ConnectionRefusedError:
            refused.append(shown)
        except TimeoutError:
            failed.append(f"{shown}: no answer within {timeout:g}s")
            break  # the deadline is spent; later addresses get no time
        except OSError as exc:
            failed.append(f"{shown}: {exc.strerror or exc}")
    if sock is None:
        if refused and not failed:
            raise DialError(Reply.CONNECTION_REFUSED, "refused", f"nothing listens on {target}")
        outcome = "timeout" if any("no answer" in f for f in failed) else "unreachable"
        details = "; ".join([f"{r}: connection refused" for r in refused] + failed)
        raise DialError(Reply.HOST_UNREACHABLE, outcome, details)

    if mapping.protocol != "tcp-tls":
        return Backend(sock=sock)
    assert tls_context is not None, "a tcp-tls mapping needs the truststore context"
    try:
        async with asyncio.timeout_at(deadline):
            streams = await asyncio.open_connection(
                sock=sock,
                ssl=tls_context,
                server_hostname=mapping.server_hostname,
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
                limit=READ_LIMIT,
            )
    except BaseException as exc:
        sock.close()
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise await _untrusted(mapping, exc, deadline) from exc
        if isinstance(exc, TimeoutError):
            raise DialError(
                Reply.GENERAL_FAILURE,
                "tls_failed",
                f"TLS: no handshake with {target} within {timeout:g}s (is it a TLS port?)",
            ) from None
        if isinstance(exc, ssl.SSLError):
            raise DialError(
                Reply.GENERAL_FAILURE,
                "tls_failed",
                f"TLS: handshake with {target} failed: {exc.reason or exc} (is it a TLS port?)",
            ) from exc
        if isinstance(exc, OSError):
            raise DialError(
                Reply.GENERAL_FAILURE,
                "tls_failed",
                f"TLS: {target} closed the connection during the handshake "
                f"({exc.strerror or type(exc).__name__})",
            ) from exc
        raise
    return Backend(streams=streams)


async def _untrusted(
    mapping: Mapping, exc: ssl.SSLCertVerificationError, deadline: float
) -> DialError:
    """A DialError for a certificate the truststore does not vouch for, with the subject and
    issuer fetched by a second, unverified handshake (the failed one does not expose them)."""
    what = exc.verify_message or exc.reason or str(exc)
    if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        problem = f"certificate does not match the name {mapping.server_hostname!r} ({what})"
    elif exc.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        problem = f"certificate expired ({what})"
    else:
        problem = f"certificate not trusted ({what})"
    certificate: PeerCertificate | None = None
    with contextlib.suppress(Exception):  # a best-effort detail; the reason stands without it
        async with asyncio.timeout_at(max(deadline, asyncio.get_running_loop().time() + 2)):
            certificate = await peek_certificate(
                mapping.internal_host, mapping.internal_port, mapping.server_hostname
            )
    reason = f"TLS: {problem}"
    if certificate is not None:
        reason += f": {certificate.describe()}"
        if exc.verify_code == 62 and certificate.names:
            reason += f", names {', '.join(certificate.names)}"
    return DialError(Reply.GENERAL_FAILURE, "tls_untrusted", reason, certificate=certificate)


async def peek_certificate(host: str, port: int, server_name: str) -> PeerCertificate:
    """The back end's leaf certificate, read without verifying it (only to describe it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_name)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.transport.abort()
    if not der:
        raise ValueError("the back end sent no certificate")
    return describe_certificate(der)


def describe_certificate(der: bytes) -> PeerCertificate:
    cert = x509.load_der_x509_certificate(der)
    names: tuple[str, ...] = ()
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(
            [str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        )
    return PeerCertificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=names,
        not_after=cert.not_valid_after_utc.isoformat(),
    )
