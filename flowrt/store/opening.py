"""Opening a tenant's stores on the backend its ``store`` setting names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowrt.errors import StoreError
from flowrt.store.api import DeploymentStore, MplBackend, StateBackend
from flowrt.store.config import StoreConfig, store_config
from flowrt.tenant import Tenant

if TYPE_CHECKING:
    from flowrt.store.pg.connect import PgDatabase

__all__ = ["is_shared", "open_database", "open_deployments", "open_mpl", "open_state"]


def is_shared(tenant: Tenant) -> bool:
    """Whether the tenant's store is PostgreSQL (several nodes)."""
    return store_config(tenant) is not None


def store_password(tenant: Tenant, config: StoreConfig) -> str | None:
    """The database password from the credential store, when tenant.json names one (else
    libpq finds it: PGPASSFILE, ~/.pgpass, a service file)."""
    if config.credential is None:
        return None
    from flowrt.security.credentials import CredentialStore

    try:
        return CredentialStore.open(tenant).get_user(config.credential).password.reveal()
    except Exception as exc:
        raise StoreError(
            f"the store's credential {config.credential!r} cannot be read: {exc}",
            hint=f"add it with `flowrt --tenant {tenant.root} credentials add "
            f"{config.credential} --user USER --password-stdin`",
        ) from exc


def open_database(
    tenant: Tenant, config: StoreConfig | None = None, *, check: bool = True, max_size: int = 4
) -> PgDatabase:
    from flowrt.store.pg.connect import PgDatabase

    config = config or store_config(tenant)
    if config is None:
        raise StoreError(f"the tenant {tenant.root} keeps its store in SQLite files")
    return PgDatabase(
        config,
        password=store_password(tenant, config),
        check=check,
        max_size=max_size,
        tenant_dir=str(tenant.root),
    )


def open_mpl(tenant: Tenant, *, create: bool = True, max_size: int = 4) -> MplBackend | None:
    """The tenant's MPL; None when ``create`` is False and there is none yet (SQLite).
    ``max_size``: its PostgreSQL pool's connections at most."""
    config = store_config(tenant)
    if config is None:
        from flowrt.mpl.store import MplStore

        if not create and not tenant.mpl_path.exists():
            return None
        return MplStore(tenant.mpl_path, create=create)
    from flowrt.store.pg.mpl import PgMplStore

    return PgMplStore(open_database(tenant, config, max_size=max_size))


def open_state(tenant: Tenant, *, create: bool = True, max_size: int = 4) -> StateBackend | None:
    """The tenant's runtime state; None when ``create`` is False and there is none yet.
    ``max_size``: its PostgreSQL pool's connections at most."""
    config = store_config(tenant)
    if config is None:
        from flowrt.runtime.state import StateDB

        if not create and not tenant.state_path.exists():
            return None
        return StateDB(tenant.state_path, create=create)
    from flowrt.store.pg.state import PgStateDB

    return PgStateDB(open_database(tenant, config, max_size=max_size))


def open_deployments(tenant: Tenant) -> DeploymentStore:
    config = store_config(tenant)
    if config is None:
        from flowrt.runtime.deployments import Deployments

        return Deployments(tenant)
    from flowrt.store.pg.deployments import PgDeployments

    return PgDeployments(open_database(tenant, config, max_size=2), tenant)
