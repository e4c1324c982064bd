"""SASL pieces the IMAP and POP3 clients share: PLAIN, CRAM-MD5, XOAUTH2 and APOP.

Each function takes the secret as a :class:`~flowrt.security.Secret` and reveals it only to
compute the bytes that go on the wire, so that no command object, log line or exception ever
holds a password or a token.
"""

from __future__ import annotations

import hashlib
import hmac

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


def apop_digest(timestamp: bytes, password: Secret) -> str:
    """RFC 1939 APOP: ``hex(MD5(timestamp + password))``."""
    return hashlib.md5(timestamp + password.reveal().encode("utf-8")).hexdigest()


def unsafe_for_wire(value: str) -> bool:
    """Whether a user name or password would break a command line (CR, LF or NUL)."""
    return any(c in value for c in "\r\n\0")
