"""`flowrt init`: a new tenant directory with its master key and empty security stores."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path

from flowrt import __version__
from flowrt._fs import atomic_write
from flowrt.errors import TenantError
from flowrt.security.credentials import CredentialStore
from flowrt.security.keystore import create_empty_keystore
from flowrt.security.locations import Locations
from flowrt.security.masterkey import (
    SOURCE_ENV,
    SOURCE_FILE,
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


def init_tenant(root: Path, *, environ: Mapping[str, str] | None = None) -> InitResult:
    """Create the tenant at ``root``: a new or empty directory, made 0700.

    The marker is written last, so a tenant exists only once everything else is in place.
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
    marker = {
        "flowrt_tenant": MARKER_FORMAT,
        "created": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "created_by": f"flowrt {__version__}",
        "master_key": {"source": source, "check": key.check_value()},
    }
    atomic_write(tenant.marker_path, (json.dumps(marker, indent=2) + "\n").encode("utf-8"))
    return InitResult(tenant, source)
