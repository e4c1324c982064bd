"""Setting a PostgreSQL store up (``flowrt init --store``) and upgrading it
(``flowrt upgrade``): the only places that change the store's schema."""

from __future__ import annotations

import psycopg

from flowrt.errors import StoreError
from flowrt.security.credentials import CredentialStore, UserCredential
from flowrt.security.masterkey import MasterKey
from flowrt.security.secret import Secret
from flowrt.store.config import StoreConfig
from flowrt.store.opening import open_database
from flowrt.store.pg import schema
from flowrt.store.pg.connect import PgDatabase, connect_error
from flowrt.tenant import Tenant

__all__ = ["create_schema", "probe", "upgrade"]


def probe(config: StoreConfig, password: str | None, *, tenant_dir: str) -> None:
    """Refuse an unreachable database, or one that already holds a flowrt store."""
    kwargs: dict[str, object] = {"connect_timeout": 5, "autocommit": True}
    if password is not None:
        kwargs["password"] = password
    try:
        with psycopg.connect(config.url, **kwargs) as conn:  # type: ignore[arg-type]
            meta = schema.read_meta(conn)
    except psycopg.Error as exc:
        raise connect_error(config.url, exc) from exc
    if meta is not None:
        raise StoreError(
            f"the database {config.shown} already holds a flowrt store (tenant "
            f"{meta.get('tenant_id', '?')})",
            hint="give each tenant a database of its own (createdb); to add a node to that "
            "tenant, copy its tenant directory to the node instead of running init",
        )


def create_schema(
    tenant: Tenant, key: MasterKey, config: StoreConfig, password: str | None
) -> None:
    """Keep the password in the new credential store, then apply every migration."""
    if password is not None and config.credential is not None:
        user = config.url.split("//", 1)[-1].split("@", 1)[0] if "@" in config.url else ""
        store = CredentialStore.open(tenant, key)
        store.put(UserCredential(config.credential, user, Secret(password)), replace=True)
        store.save()
    db = PgDatabase(config, password=password, check=False, max_size=1)
    try:
        with db.direct() as conn:
            schema.migrate(conn, config)
    finally:
        db.close()


def upgrade(tenant: Tenant) -> tuple[int, int]:
    """Apply the pending migrations to the tenant's store: ``(before, after)``."""
    db = open_database(tenant, check=False, max_size=1)
    try:
        with db.direct() as conn:
            return schema.migrate(conn, db.config)
    finally:
        db.close()
