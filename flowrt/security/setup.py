"""`flowrt init`: a new tenant directory with its master key and empty security stores."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flowrt import __version__
from flowrt._fs import atomic_write
from flowrt.errors import TenantError
from flowrt.security.credentials import CredentialStore
from flowrt.security.keystore import create_empty_keystore
from flowrt.security.locations import Locations
from flowrt.security.masterkey import (
    SOURCE_ENV,
    SOURCE_FILE,
    MasterKey,
    env_master_key,
    generate_master_key,
    write_master_key_file,
)
from flowrt.tenant import MARKER, Tenant

MARKER_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class InitResult:
    tenant: Tenant
    master_key_source: str  # "file" or "env"

    @property
    def master_key_path(self) -> Path | None:
        return self.tenant.master_key_path if self.master_key_source == SOURCE_FILE else None


def init_tenant(
    root: Path,
    *,
    environ: Mapping[str, str] | None = None,
    store: Mapping[str, Any] | None = None,
    prepare: Callable[[Tenant, MasterKey], None] | None = None,
) -> InitResult:
    """Create the tenant at ``root``: a new or empty directory, made 0700.

    ``store`` is the marker's store section (PostgreSQL); ``prepare`` runs once the security
    stores exist and before the marker is written (it sets the store up). The marker is
    written last, so a tenant exists only once everything else is in place; if anything
    fails, what was created is removed again.
    """
    tenant = Tenant(root)
    if tenant.exists():
        raise TenantError(
            f"{root} is already a flowrt tenant; init does not reset a tenant",
            hint="use the tenant as it is, or give `--tenant` a new directory",
        )
    if root.exists() and not root.is_dir():
        raise TenantError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        raise TenantError(
            f"{root} is not empty and is not a flowrt tenant (no {MARKER})",
            hint="give `--tenant` a new or empty directory",
        )
    key = env_master_key(environ)  # validated before anything is created
    created = not root.exists()
    try:
        return _create(root, tenant, key, store, prepare)
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:  # it was an empty directory: empty it again
            for child in root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _create(
    root: Path,
    tenant: Tenant,
    key: MasterKey | None,
    store: Mapping[str, Any] | None,
    prepare: Callable[[Tenant, MasterKey], None] | None,
) -> InitResult:
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # also when it existed (empty) with a looser mode
    except OSError as exc:
        raise TenantError(f"cannot create the tenant directory {root}: {exc.strerror}") from exc

    source = SOURCE_ENV
    if key is None:
        source = SOURCE_FILE
        key = generate_master_key()
        write_master_key_file(tenant.master_key_path, key)
    create_empty_keystore(tenant, key)
    CredentialStore.empty(tenant.credentials_path, key).save()
    Locations(tenant.locations_path, []).save()
    if prepare is not None:
        prepare(tenant, key)
    marker: dict[str, Any] = {
        "flowrt_tenant": MARKER_FORMAT,
        "created": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "created_by": f"flowrt {__version__}",
        "master_key": {"source": source, "check": key.check_value()},
    }
    if store is not None:
        marker["store"] = dict(store)
    atomic_write(tenant.marker_path, (json.dumps(marker, indent=2) + "\n").encode("utf-8"))
    return InitResult(tenant, source)
