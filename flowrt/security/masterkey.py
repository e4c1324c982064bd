"""The tenant master key: where it comes from, and the keys derived from it.

The master key is 32 random bytes. ``FLOWRT_MASTER_KEY`` wins when it is set: its value is the
key in base64 (standard or URL-safe alphabet, padding optional), as ``openssl rand -base64 32``
prints it. Otherwise the key is the raw 32 bytes of ``master.key`` in the tenant, which must not
be readable by group or others.

Nothing uses the master key directly; each use derives its own key with HKDF-SHA256 and a
purpose string (the credential store's key, the keystore's PKCS#12 password, the check value),
so that one derived value never reveals another or the master key.

The tenant marker keeps a short check value of the key, so that a wrong key (say, the
``FLOWRT_MASTER_KEY`` of another tenant) is reported as such before any store is opened.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flowrt.errors import CredentialError
from flowrt.tenant import MASTER_KEY_ENV, Tenant

MASTER_KEY_SIZE = 32
SOURCE_ENV = "env"
SOURCE_FILE = "file"
_GENERATE_HINT = "generate one with `openssl rand -base64 32`"


class MasterKey:
    """32 secret bytes; its repr never shows them."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_SIZE:
            raise CredentialError(
                f"a master key is {MASTER_KEY_SIZE} bytes, this one has {len(key)}"
            )
        self._key = bytes(key)

    def derive(self, purpose: str, *, length: int = 32, salt: bytes | None = None) -> bytes:
        """A key for one ``purpose`` only (HKDF-SHA256, the purpose is the HKDF info)."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=salt,
            info=b"flowrt/" + purpose.encode("utf-8"),
        )
        return hkdf.derive(self._key)

    def check_value(self) -> str:
        """A short public value that tells whether two master keys are the same."""
        return self.derive("key-check", length=8).hex()

    def reveal(self) -> bytes:
        """The raw key; only `flowrt init` needs it, to write the key file."""
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MasterKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.check_value())

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"


def generate_master_key() -> MasterKey:
    return MasterKey(secrets.token_bytes(MASTER_KEY_SIZE))


def master_key_from_env_value(value: str) -> MasterKey:
    """Decode ``FLOWRT_MASTER_KEY``; the error never repeats the value."""
    text = "".join(value.split()).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CredentialError(f"{MASTER_KEY_ENV} is not base64", hint=_GENERATE_HINT) from None
    if len(raw) != MASTER_KEY_SIZE:
        raise CredentialError(
            f"{MASTER_KEY_ENV} decodes to {len(raw)} bytes; a master key is "
            f"{MASTER_KEY_SIZE} bytes",
            hint=_GENERATE_HINT,
        )
    return MasterKey(raw)


def env_master_key(environ: Mapping[str, str] | None = None) -> MasterKey | None:
    """The key from ``FLOWRT_MASTER_KEY``, or None when the variable is unset or empty."""
    value = (os.environ if environ is None else environ).get(MASTER_KEY_ENV, "")
    return master_key_from_env_value(value) if value.strip() else None


def write_master_key_file(path: Path, key: MasterKey) -> None:
    """Create ``path`` with mode 0600; never overwrite an existing key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask said
        os.write(fd, key.reveal())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_master_key_file(path: Path) -> MasterKey:
    """The key in ``path``; refused when group or others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise CredentialError(
            f"the master key file {path} does not exist",
            hint=f"set {MASTER_KEY_ENV}, or restore {path} from your backup",
        ) from None
    except OSError as exc:
        raise CredentialError(f"cannot read the master key file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise CredentialError(
                f"the master key file {path} is accessible to group or others "
                f"(mode {mode:04o}); refusing to use it",
                hint=f"chmod 600 {path}",
            )
        data = os.read(fd, MASTER_KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != MASTER_KEY_SIZE:
        raise CredentialError(
            f"the master key file {path} holds {len(data)}"
            f"{'+' if len(data) > MASTER_KEY_SIZE else ''} bytes, expected {MASTER_KEY_SIZE}",
            hint=f"restore {path} from your backup",
        )
    return MasterKey(data)


def load_master_key(tenant: Tenant, *, environ: Mapping[str, str] | None = None) -> MasterKey:
    """The tenant's master key: ``FLOWRT_MASTER_KEY`` first, else ``master.key``.

    The key is checked against the check value kept in the tenant marker.
    """
    marker = tenant.read_marker()
    recorded = marker.get("master_key")
    if not isinstance(recorded, dict):
        recorded = {}
    key = env_master_key(environ)
    source = SOURCE_ENV
    if key is None:
        source = SOURCE_FILE
        if recorded.get("source") == SOURCE_ENV and not tenant.master_key_path.exists():
            raise CredentialError(
                f"the master key of the tenant {tenant.root} is given by {MASTER_KEY_ENV}, "
                "which is not set",
                hint=f"export {MASTER_KEY_ENV} with the key the tenant was created with",
            )
        key = read_master_key_file(tenant.master_key_path)
    check = recorded.get("check")
    if isinstance(check, str) and not hmac.compare_digest(check, key.check_value()):
        where = MASTER_KEY_ENV if source == SOURCE_ENV else str(tenant.master_key_path)
        raise CredentialError(
            f"the master key from {where} is not the master key of the tenant {tenant.root}",
            hint=(
                f"unset {MASTER_KEY_ENV} or set it to this tenant's key"
                if source == SOURCE_ENV
                else f"restore {tenant.master_key_path} from your backup"
            ),
        )
    return key
