"""The tenant's stores behind one seam: SQLite files in the tenant directory (the embedded
default) or one PostgreSQL database shared by several runtime nodes.

:func:`open_mpl`, :func:`open_state` and :func:`open_deployments` pick the backend from the
tenant's ``store`` setting (:mod:`flowrt.store.config`); the PostgreSQL classes live in
:mod:`flowrt.store.pg` and are imported only when a tenant uses it.
"""

from flowrt.store.api import DeploymentStore, MplBackend, StateBackend
from flowrt.store.config import StoreConfig, store_config
from flowrt.store.opening import (
    is_shared,
    open_database,
    open_deployments,
    open_mpl,
    open_state,
)

__all__ = [
    "DeploymentStore",
    "MplBackend",
    "StateBackend",
    "StoreConfig",
    "is_shared",
    "open_database",
    "open_deployments",
    "open_mpl",
    "open_state",
    "store_config",
]
