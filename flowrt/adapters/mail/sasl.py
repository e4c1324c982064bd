"""SASL pieces the mail clients share: PLAIN, CRAM-MD5, XOAUTH2, OAUTHBEARER and APOP.

Each function takes the secret as a :class:`~flowrt.security.Secret` and reveals it only to
compute the bytes that go on the wire, so that no command object, log line or exception ever
holds a password or a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from flowrt.security.secret import Secret


def plain_response(user: str, password: Secret) -> bytes:
    """RFC 4616: ``authzid NUL authcid NUL passwd`` (no authzid)."""
    return b"\0" + user.encode("utf-8") + b"\0" + password.reveal().encode("utf-8")


def cram_md5_response(user: str, password: Secret, challenge: bytes) -> bytes:
    """RFC 2195: ``user SP hex(HMAC-MD5(password, challenge))``."""
    digest = hmac.new(password.reveal().encode("utf-8"), challenge, hashlib.md5).hexdigest()
    return f"{user} {digest}".encode()


def xoauth2_response(user: str, token: Secret) -> bytes:
    """Google's and Microsoft's XOAUTH2: ``user=U ^A auth=Bearer T ^A ^A``."""
    return f"user={user}\x01auth=Bearer {token.reveal()}\x01\x01".encode()


def oauthbearer_response(user: str, token: Secret, host: str, port: int) -> bytes:
    """RFC 7628: ``n,a=USER,`` then ``host=H ^A port=P ^A auth=Bearer T ^A ^A``. A ``,`` or
    ``=`` in the user is escaped as the GS2 header requires (RFC 5801)."""
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    return (
        f"n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token.reveal()}\x01\x01"
    ).encode()


# RFC 7628 3.2.3: after an error challenge the client answers with a lone ^A to end the
# exchange (XOAUTH2 takes an empty answer instead).
OAUTHBEARER_ABORT = b"\x01"

# In the order they are preferred.
OAUTH2_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


def oauth2_mechanism(offered: Callable[[str], bool]) -> str | None:
    """OAUTHBEARER (the standard) when the server offers it, else XOAUTH2 (Microsoft offers
    only that one), else None."""
    return next((m for m in OAUTH2_MECHANISMS if offered(m)), None)


def oauth2_response(mechanism: str, user: str, token: Secret, host: str, port: int) -> bytes:
    if mechanism == "OAUTHBEARER":
        return oauthbearer_response(user, token, host, port)
    return xoauth2_response(user, token)


def apop_digest(timestamp: bytes, password: Secret) -> str:
    """RFC 1939 APOP: ``hex(MD5(timestamp + password))``."""
    return hashlib.md5(timestamp + password.reveal().encode("utf-8")).hexdigest()


def unsafe_for_wire(value: str) -> bool:
    """Whether a user name or password would break a command line (CR, LF or NUL)."""
    return any(c in value for c in "\r\n\0")
