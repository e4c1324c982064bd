"""What the runtime takes from a tenant's security files, reloaded when a file changes.

The runtime keeps one :class:`TenantSecurity` for the life of the process. Each accessor checks
the file it reads (modification time, size and inode: every write is a rename, so any change
shows) and reads it again only when it changed, so that `flowrt keystore add` or `flowrt
credentials add --replace` take effect on the next connection without a restart.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from flowrt.security.credentials import (
    Credential,
    CredentialStore,
    UserCredential,
    edit_credentials,
)
from flowrt.security.keystore import Keystore, keystore_password
from flowrt.security.locations import Location, Locations
from flowrt.security.masterkey import MasterKey, load_master_key
from flowrt.security.secret import Secret
from flowrt.security.tls import client_context
from flowrt.tenant import Tenant

T = TypeVar("T")
_Signature = tuple[int, int, int] | None


def _signature(path: Path) -> _Signature:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class _Reloading(Generic[T]):
    """One file's parsed content, parsed again when the file changes."""

    def __init__(self, path: Path, load: Callable[[], T]) -> None:
        self._path = path
        self._load = load
        self._signature: _Signature = None
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            signature = _signature(self._path)
            if self._value is None or signature != self._signature:
                self._value = self._load()
                self._signature = signature
            return self._value


class TenantSecurity:
    """Keystore, credentials, locations and TLS contexts of one tenant, for the runtime."""

    def __init__(self, tenant: Tenant, master_key: MasterKey) -> None:
        self.tenant = tenant
        self._master_key = master_key
        password = keystore_password(master_key)
        self._keystore = _Reloading(
            tenant.keystore_path, lambda: Keystore.load(tenant.keystore_path, password)
        )
        self._credentials = _Reloading(
            tenant.credentials_path,
            lambda: CredentialStore.load(tenant.credentials_path, master_key),
        )
        self._locations = _Reloading(
            tenant.locations_path, lambda: Locations.load(tenant.locations_path)
        )

    @classmethod
    def open(cls, tenant: Tenant) -> TenantSecurity:
        """Load the tenant's master key (FLOWRT_MASTER_KEY or master.key) and check it."""
        return cls(tenant, load_master_key(tenant.require()))

    def keystore(self) -> Keystore:
        return self._keystore.get()

    def credentials(self) -> CredentialStore:
        return self._credentials.get()

    def locations(self) -> Locations:
        return self._locations.get()

    def credential(self, name: str) -> Credential:
        """A credential by name; CredentialError (with a hint) when there is none."""
        return self.credentials().get(name)

    def user_credential(self, name: str) -> UserCredential:
        """A ``user`` credential by name (mail logins, the SOCKS5 connector)."""
        return self.credentials().get_user(name)

    def replace_refresh_token(self, name: str, used: Secret, new: Secret) -> bool:
        """Store a rotated refresh token (locked, atomic rename: a crash leaves the old or
        the new file, never none); False when the stored token is no longer ``used``."""
        with edit_credentials(self.tenant, self._master_key) as store:
            return store.replace_refresh_token(name, used, new)

    def location(self, location_id: str) -> Location:
        """An on-premise location; ConnectorError (with a hint) when it is unknown."""
        return self.locations().get(location_id)

    def client_context(self, *, client_alias: str | None = None) -> ssl.SSLContext:
        """A verifying TLS context from the current keystore (see :mod:`flowrt.security.tls`)."""
        return client_context(self.keystore(), client_alias=client_alias)

    def __repr__(self) -> str:
        return f"TenantSecurity({str(self.tenant.root)!r})"
