"""Versioned migrations of the PostgreSQL store: plain numbered SQL files.

Why plain SQL and not Alembic: flowrt has no ORM models to diff against, the schema is small,
and an operator (or a DBA reviewing a change) reads exactly what will run:
``flowrt/store/pg/migrations/NNNN_name.sql``, applied in order, each once, never edited after
release. ``flowrt_meta.schema_version`` holds the number applied.

Migrations run only from ``flowrt init`` and ``flowrt upgrade``, in one transaction under an
advisory lock (two upgrades at once apply each file once). A running node never migrates: it
refuses a schema that is not its own and names the command to run, so that upgrading is a
decision, not a side effect of restarting one node of several.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

from flowrt.errors import StoreError
from flowrt.store.config import StoreConfig

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check", "migrate", "read_meta"]

_MIGRATE_LOCK = 0x666C6F77  # "flow": the advisory lock key of a migration


def _load() -> tuple[tuple[str, str], ...]:
    folder = resources.files("flowrt.store.pg") / "migrations"
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    for number, name in enumerate(files, start=1):
        if not name.startswith(f"{number:04d}_"):  # a gap would skip a migration
            raise RuntimeError(f"migration {name} is out of sequence")
    return tuple((name, (folder / name).read_text(encoding="utf-8")) for name in files)


MIGRATIONS = _load()
SCHEMA_VERSION = len(MIGRATIONS)


def read_meta(conn: psycopg.Connection[Any]) -> dict[str, str] | None:
    """The flowrt_meta rows, or None when the database has no flowrt schema."""
    if conn.execute("SELECT to_regclass('flowrt_meta')").fetchone() == (None,):
        return None
    return {str(n): str(v) for n, v in conn.execute("SELECT name, value FROM flowrt_meta")}


def _upgrade_hint(tenant_dir: str | None) -> str:
    where = f"--tenant {tenant_dir} " if tenant_dir else ""
    return f"run `flowrt {where}upgrade` once (it applies the store's migrations)"


def check(conn: psycopg.Connection[Any], config: StoreConfig, *, tenant_dir: str | None) -> None:
    """Refuse a database that is not this tenant's, at this flowrt's schema version."""
    meta = read_meta(conn)
    if meta is None:
        raise StoreError(
            f"the store database {config.shown} has no flowrt schema",
            hint=_upgrade_hint(tenant_dir) + " if this is the right database",
        )
    _check_tenant(meta, config)
    version = int(meta.get("schema_version", "0"))
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"the store database {config.shown} has schema version {version}; this flowrt "
            f"needs {SCHEMA_VERSION}",
            hint=_upgrade_hint(tenant_dir),
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store database {config.shown} has schema version {version}, newer than this "
            f"flowrt knows ({SCHEMA_VERSION})",
            hint="run a flowrt as new as the one that upgraded it, on every node",
        )


def _check_tenant(meta: dict[str, str], config: StoreConfig) -> None:
    owner = meta.get("tenant_id")
    if owner is not None and owner != config.tenant_id:
        raise StoreError(
            f"the store database {config.shown} belongs to another tenant (id {owner}, this "
            f"tenant is {config.tenant_id})",
            hint="each tenant needs a database of its own: fix the URL in tenant.json's store "
            "section, or join that tenant by copying its tenant directory",
        )


def migrate(conn: psycopg.Connection[Any], config: StoreConfig) -> tuple[int, int]:
    """Apply the pending migrations; ``(version before, version after)``."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        meta = read_meta(conn) or {}
        _check_tenant(meta, config)
        before = int(meta.get("schema_version", "0"))
        if before > SCHEMA_VERSION:
            raise StoreError(
                f"the store database {config.shown} has schema version {before}, newer than "
                f"this flowrt knows ({SCHEMA_VERSION})",
                hint="run a flowrt as new as the one that upgraded it",
            )
        for _name, sql in MIGRATIONS[before:]:
            conn.execute(sql.encode("utf-8"))
        if before < SCHEMA_VERSION or "tenant_id" not in meta:
            for name, value in (
                ("schema_version", str(SCHEMA_VERSION)),
                ("tenant_id", config.tenant_id),
            ):
                conn.execute(
                    "INSERT INTO flowrt_meta (name, value) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )
    return before, SCHEMA_VERSION
