"""One lock for changes to the tenant's security files.

A change is read-modify-write; two commands changing the keystore at the same time would
otherwise lose one change. Readers take no lock: every write is atomic, so they see the old
file or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from flowrt.errors import TenantError
from flowrt.tenant import Tenant


@contextlib.contextmanager
def security_lock(tenant: Tenant) -> Iterator[None]:
    """Hold the tenant's security lock (blocking) for the body of the ``with``."""
    path = tenant.security_lock_path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise TenantError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
