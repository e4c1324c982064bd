"""Where a tenant keeps its things, and how commands find the tenant directory.

A tenant is a directory (``--tenant DIR``, ``FLOWRT_HOME``, default ``./.flowrt``) holding the
keystore, the credential store, the master key, the MPL database, the deployed flows and the
runtime state. This module only knows the layout; the stores live in their own packages.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from flowrt.errors import TenantError

DEFAULT_TENANT_DIR = ".flowrt"
TENANT_ENV = "FLOWRT_HOME"
MASTER_KEY_ENV = "FLOWRT_MASTER_KEY"
MARKER = "tenant.json"


@dataclasses.dataclass(frozen=True)
class Tenant:
    """The layout of one tenant directory."""

    root: Path

    @property
    def marker_path(self) -> Path:
        return self.root / MARKER

    @property
    def keystore_path(self) -> Path:
        return self.root / "keystore.p12"

    @property
    def credentials_path(self) -> Path:
        return self.root / "credentials.enc"

    @property
    def master_key_path(self) -> Path:
        return self.root / "master.key"

    @property
    def mpl_path(self) -> Path:
        return self.root / "mpl.sqlite"

    @property
    def state_path(self) -> Path:
        """Runtime state: deployed flow versions, locks, idempotency records, flow status."""
        return self.root / "state.sqlite"

    @property
    def locations_path(self) -> Path:
        """On-premise location IDs and the SOCKS5 connector address each one goes through."""
        return self.root / "locations.json"

    @property
    def security_lock_path(self) -> Path:
        """Held while the keystore, credential store or locations are changed."""
        return self.root / ".security.lock"

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    def read_marker(self) -> dict[str, Any]:
        """The marker's content, as written by `flowrt init` (the tenant must exist)."""
        self.require()
        restore = (
            f"restore {self.marker_path} from a backup: it marks the directory as a tenant and "
            "holds the check value of its master key (a small JSON file)"
        )
        try:
            data = json.loads(self.marker_path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise TenantError(
                f"cannot read the tenant marker {self.marker_path}: {exc.strerror or exc}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise TenantError(
                f"the tenant marker {self.marker_path} is damaged: byte {exc.start} is not "
                "UTF-8 text",
                hint=restore,
            ) from None
        except ValueError as exc:
            raise TenantError(
                f"the tenant marker {self.marker_path} is damaged: not JSON ({exc})", hint=restore
            ) from None
        if not isinstance(data, dict):
            raise TenantError(
                f"the tenant marker {self.marker_path} is not a JSON object", hint=restore
            )
        return data

    def exists(self) -> bool:
        return self.marker_path.is_file()

    def require(self) -> Tenant:
        """Return self, or raise a TenantError that says how to create the tenant."""
        if not self.root.exists():
            raise TenantError(
                missing_tenant_reason(self.root),
                hint=f"create one with `flowrt --tenant {self.root} init`, "
                f"or point --tenant / {TENANT_ENV} at an existing tenant",
            )
        if not self.exists():
            raise TenantError(
                f"{self.root} is not a flowrt tenant (no {MARKER})",
                hint=f"create one with `flowrt --tenant {self.root} init`",
            )
        return self


def resolve_tenant_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """``--tenant`` wins, then ``FLOWRT_HOME``, then ``./.flowrt``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(TENANT_ENV)
    if env:
        return Path(env)
    return Path(DEFAULT_TENANT_DIR)


def missing_tenant_reason(root: Path) -> str:
    """``no tenant at DIR``, saying so when DIR is only the default: a forgotten
    ``FLOWRT_HOME`` should not look like a missing tenant."""
    if str(root) == DEFAULT_TENANT_DIR and not os.environ.get(TENANT_ENV):
        return (
            f"no tenant at {root} (neither --tenant nor {TENANT_ENV} is set, so flowrt "
            f"looked in ./{DEFAULT_TENANT_DIR})"
        )
    return f"no tenant at {root}"
