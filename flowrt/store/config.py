"""Which store a tenant uses: the ``store`` section of ``tenant.json``.

No section means the embedded default (SQLite files in the tenant directory). A PostgreSQL
store is written by ``flowrt init --store postgresql://...``::

    "store": {"url": "postgresql://flowrt@db.example:5432/flowrt",
              "credential": "flowrt-store",          # or null
              "tenant_id": "3f0c..."}

The URL never holds a password: it is refused with one. The password comes from the
credential store (``credential``), or from what libpq reads by itself (a password file,
``PGPASSFILE``, or a service file, ``PGSERVICEFILE`` / ``service=`` in the URL). The tenant ID
is written into the database by ``flowrt init``, so that a tenant pointed at another
tenant's database is refused instead of mixing the two.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Any

from flowrt.errors import StoreError, UsageError
from flowrt.tenant import Tenant

__all__ = ["StoreConfig", "check_url", "display_url", "store_config"]

SCHEMES = ("postgresql", "postgres")


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    url: str
    tenant_id: str
    credential: str | None = None

    @property
    def shown(self) -> str:
        return display_url(self.url)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "credential": self.credential, "tenant_id": self.tenant_id}


def check_url(url: str) -> str:
    """``url`` if it is a PostgreSQL URL without a password; UsageError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"--store: not a valid database URL ({exc})") from exc
    if parts.scheme not in SCHEMES:
        raise UsageError(
            f"--store: {display_url(url)!r} is not a PostgreSQL URL",
            hint="give postgresql://USER@HOST:PORT/DATABASE (leave --store out for the "
            "embedded SQLite store)",
        )
    if parts.password is not None:
        raise UsageError(
            "--store: the URL holds a password; it would be stored in tenant.json in clear",
            hint="leave the password out of the URL and give it with --store-password-stdin "
            "(kept in the credential store), or in a libpq password file (PGPASSFILE)",
        )
    if not parts.hostname and "host=" not in parts.query and "service=" not in parts.query:
        raise UsageError(f"--store: {url!r} names no host")
    del port
    return url


def display_url(url: str) -> str:
    """The URL without any password, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.hostname or ""
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(an unreadable URL)"


def store_config(tenant: Tenant) -> StoreConfig | None:
    """The tenant's PostgreSQL store, or None for the embedded SQLite store."""
    if not tenant.exists():
        return None
    section = tenant.read_marker().get("store")
    if section is None:
        return None
    if (
        not isinstance(section, dict)
        or not isinstance(section.get("url"), str)
        or not isinstance(section.get("tenant_id"), str)
    ):
        raise StoreError(
            f"the store section of {tenant.marker_path} is damaged (needs url and tenant_id)",
            hint="restore tenant.json from a node that works, or from a backup",
        )
    credential = section.get("credential")
    return StoreConfig(
        url=section["url"],
        tenant_id=section["tenant_id"],
        credential=credential if isinstance(credential, str) else None,
    )
