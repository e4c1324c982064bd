"""SOCKS5 wire format, server side (RFC 1928 with RFC 1929 username/password): pure functions.

Nothing here does I/O. Each ``parse_*`` function looks at the bytes received so far and
returns ``(message, bytes_used)`` when a whole message is there, ``None`` when more bytes are
needed, and raises :class:`Socks5ProtocolError` when the bytes cannot be a valid message (the
caller then closes the connection, sending ``error.reply`` first when there is one). The
``*_reply`` functions build what the server sends back.

Because parsing works on a buffer, a client that pipelines its greeting, credentials and
request in one packet is handled like one that waits for each answer; bytes left after the
request are the first application bytes and belong to the back end.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress

__all__ = [
    "AUTH_FAILURE",
    "AUTH_SUCCESS",
    "METHOD_NONE_ACCEPTABLE",
    "METHOD_USERNAME_PASSWORD",
    "AddressType",
    "Command",
    "Credentials",
    "Greeting",
    "Reply",
    "Request",
    "Socks5ProtocolError",
    "auth_reply",
    "method_reply",
    "normalize_host",
    "parse_auth",
    "parse_greeting",
    "parse_request",
    "reply",
]

VERSION = 0x05
AUTH_VERSION = 0x01  # RFC 1929 sub-negotiation version
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
AUTH_SUCCESS = 0x00
AUTH_FAILURE = 0x01


class Reply(enum.IntEnum):
    """RFC 1928 reply codes; ``text`` is the standard wording clients and operators know."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08

    @property
    def text(self) -> str:
        return _REPLY_TEXTS[self]


_REPLY_TEXTS = {
    Reply.SUCCEEDED: "Succeeded",
    Reply.GENERAL_FAILURE: "General SOCKS server failure",
    Reply.NOT_ALLOWED: "Connection not allowed by ruleset",
    Reply.NETWORK_UNREACHABLE: "Network unreachable",
    Reply.HOST_UNREACHABLE: "Host unreachable",
    Reply.CONNECTION_REFUSED: "Connection refused",
    Reply.TTL_EXPIRED: "TTL expired",
    Reply.COMMAND_NOT_SUPPORTED: "Command not supported",
    Reply.ADDRESS_TYPE_NOT_SUPPORTED: "Address type not supported",
}


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Socks5ProtocolError(Exception):
    """The peer sent something that is not SOCKS5; ``reply`` is what to send before closing."""

    def __init__(self, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclasses.dataclass(frozen=True)
class Greeting:
    """The method-selection message: the authentication methods the client offers."""

    methods: frozenset[int]


@dataclasses.dataclass(frozen=True)
class Credentials:
    """RFC 1929 username and password. ``repr`` hides the password: it must never be logged."""

    username: str
    password: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class Request:
    """A request; ``host`` is normalized (see :func:`normalize_host`), ``command`` may be any
    byte value so that the server can answer an unknown one with *Command not supported*."""

    command: int
    address_type: AddressType
    host: str
    port: int


def parse_greeting(buf: bytes | bytearray) -> tuple[Greeting, int] | None:
    """``VER NMETHODS METHODS...``."""
    if len(buf) < 2:
        return None
    if buf[0] != VERSION:
        # Not SOCKS5 (SOCKS4, HTTP, TLS...): no reply can be understood, so none is sent.
        raise Socks5ProtocolError(f"not a SOCKS5 greeting (first byte 0x{buf[0]:02x})")
    count = buf[1]
    if count == 0:
        raise Socks5ProtocolError(
            "the greeting offers no authentication method",
            reply=method_reply(METHOD_NONE_ACCEPTABLE),
        )
    if len(buf) < 2 + count:
        return None
    return Greeting(frozenset(buf[2 : 2 + count])), 2 + count


def parse_auth(buf: bytes | bytearray) -> tuple[Credentials, int] | None:
    """``VER ULEN UNAME PLEN PASSWD`` (RFC 1929); lengths are 1 to 255."""
    if len(buf) < 2:
        return None
    if buf[0] != AUTH_VERSION:
        raise Socks5ProtocolError(
            f"not an RFC 1929 username/password message (version 0x{buf[0]:02x})",
            reply=auth_reply(False),
        )
    ulen = buf[1]
    if len(buf) < 2 + ulen + 1:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    if ulen == 0 or plen == 0:
        raise Socks5ProtocolError("empty username or password", reply=auth_reply(False))
    raw_user = bytes(buf[2 : 2 + ulen])
    try:
        username = raw_user.decode("utf-8")
    except UnicodeDecodeError:
        # Kept readable for the log line; it cannot equal a (validated, ASCII) location ID.
        username = raw_user.decode("utf-8", "backslashreplace")
    return Credentials(username, bytes(buf[3 + ulen : end])), end


def parse_request(buf: bytes | bytearray) -> tuple[Request, int] | None:
    """``VER CMD RSV ATYP DST.ADDR DST.PORT``.

    RSV is not checked (it carries no meaning); an unknown address type cannot be skipped,
    so it ends the connection with *Address type not supported*.
    """
    if len(buf) < 4:
        return None
    if buf[0] != VERSION:
        raise Socks5ProtocolError(
            f"not a SOCKS5 request (version 0x{buf[0]:02x})", reply=reply(Reply.GENERAL_FAILURE)
        )
    command, atyp = buf[1], buf[3]
    if atyp == AddressType.IPV4:
        end = 4 + 4 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[4:8])))
    elif atyp == AddressType.IPV6:
        end = 4 + 16 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[4:20])))
    elif atyp == AddressType.DOMAIN:
        if len(buf) < 5:
            return None
        length = buf[4]
        end = 5 + length + 2
        if len(buf) < end:
            return None
        if length == 0:
            raise Socks5ProtocolError(
                "empty domain name in the request", reply=reply(Reply.GENERAL_FAILURE)
            )
        host = normalize_host(bytes(buf[5 : 5 + length]).decode("ascii", "backslashreplace"))
    else:
        raise Socks5ProtocolError(
            f"unknown address type 0x{atyp:02x}", reply=reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        )
    port = int.from_bytes(buf[end - 2 : end], "big")
    return Request(command, AddressType(atyp), host, port), end


def normalize_host(host: str) -> str:
    """The form virtual hosts are compared in: IP addresses canonical (``::1``, not
    ``0:0::1``), names lower case without a trailing dot. A domain name that is an IP
    literal (as some clients send) matches the address."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.rstrip(".").lower()


def method_reply(method: int) -> bytes:
    return bytes((VERSION, method))


def auth_reply(ok: bool) -> bytes:
    return bytes((AUTH_VERSION, AUTH_SUCCESS if ok else AUTH_FAILURE))


# The bound address is always 0.0.0.0:0: the point of a virtual mapping is that the cloud
# side never learns the internal address, and no client of a CONNECT uses BND.ADDR anyway.
_UNSPECIFIED_BIND = bytes((AddressType.IPV4, 0, 0, 0, 0, 0, 0))


def reply(code: Reply) -> bytes:
    return bytes((VERSION, code, 0x00)) + _UNSPECIFIED_BIND
