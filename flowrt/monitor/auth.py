"""The monitor's bearer token: created by ``flowrt monitor token``, kept in the tenant only as
a SHA-256 hash (``monitor-token.json``, 0600), so a copy of the tenant does not give access.

The token is 32 random bytes; a hash without a salt or stretching is enough for a secret of
that entropy (there is no password to guess), and it keeps checking a request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from flowrt._fs import atomic_write
from flowrt.errors import TenantError
from flowrt.mpl._time import iso
from flowrt.tenant import Tenant

__all__ = ["TOKEN_FILE", "TokenCheck", "create_token", "load_token_hash"]

TOKEN_FILE = "monitor-token.json"
_PREFIX = "frt_"  # recognisable in a secret scanner, and never mistaken for a password


def _path(tenant: Tenant) -> Path:
    return tenant.root / TOKEN_FILE


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(tenant: Tenant) -> str:
    """A new token, replacing any earlier one (which stops working at once)."""
    token = _PREFIX + secrets.token_urlsafe(32)
    record = {"sha256": _digest(token), "created": iso(datetime.now(UTC))}
    atomic_write(_path(tenant), json.dumps(record, indent=2).encode("utf-8"), mode=0o600)
    return token


def load_token_hash(tenant: Tenant) -> str | None:
    """The stored hash, or None when no token was created."""
    path = _path(tenant)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TenantError(
            f"cannot read the monitor token file {path}: {exc}",
            hint="create a new token with `flowrt monitor token`",
        ) from exc
    digest = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise TenantError(
            f"the monitor token file {path} holds no token hash",
            hint="create a new token with `flowrt monitor token`",
        )
    return digest


class TokenCheck:
    """Compares presented tokens with the stored hash; re-reads the file when it changes, so
    a new token works (and the old one stops) without restarting the server.

    ``always``: a server on a non-loopback address refuses everything while no token exists
    (its file was removed after the start), rather than opening up."""

    def __init__(self, tenant: Tenant, *, always: bool = False) -> None:
        self._tenant = tenant
        self._always = always
        self._stamp: tuple[int, int] | None = None
        self._digest = load_token_hash(tenant)
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = _path(self._tenant).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    @property
    def required(self) -> bool:
        self._reload()
        return self._always or self._digest is not None

    def accepts(self, token: str | None) -> bool:
        self._reload()
        if self._digest is None:
            return not self._always
        if not token:
            return False
        return hmac.compare_digest(_digest(token), self._digest)

    def _reload(self) -> None:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self._digest = load_token_hash(self._tenant)
