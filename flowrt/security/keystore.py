"""The tenant keystore: trusted certificates and key pairs, by alias, in one PKCS#12 file.

The file opens with ``openssl pkcs12 -info`` and ``keytool -list -storetype PKCS12``: trusted
certificates carry the attribute that makes keytool list them as ``trustedCertEntry`` (see
``_pkcs12``). Its password is derived from the tenant master key (:func:`keystore_password`),
so it is never stored anywhere; `flowrt keystore password` shows it to an operator who needs
to open the file with those tools, and nothing else ever prints it.

Aliases have 1 to 250 characters from ``A-Z a-z 0-9 . _ - @ +`` and start with a letter or a
digit: safe in a shell, a table and a file name. Like keytool, flowrt treats aliases that
differ only in case as the same alias. Aliases starting with ``system_`` belong to flowrt and
cannot be added, replaced, renamed or deleted from the command line.

Every change rewrites the whole file atomically (:func:`edit_keystore`), so a failed command
leaves the keystore byte for byte as it was.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from cryptography import x509

from flowrt._fs import atomic_write
from flowrt.errors import KeystoreError
from flowrt.security import _pkcs12
from flowrt.security._lock import security_lock
from flowrt.security._pkcs12 import PrivateKey
from flowrt.security.masterkey import MasterKey, load_master_key
from flowrt.tenant import Tenant

ALIAS_MAX = 250
SYSTEM_PREFIX = "system_"
OWNER_TENANT = "tenant"
OWNER_SYSTEM = "system"
KIND_CERTIFICATE = "certificate"
KIND_KEY_PAIR = "key pair"
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
_PASSWORD_PURPOSE = "keystore-password/v1"
_LIST_HINT = "see `flowrt keystore list`"


def keystore_password(master_key: MasterKey) -> str:
    """The PKCS#12 password of the tenant keystore: 32 URL-safe characters from the master key."""
    raw = master_key.derive(_PASSWORD_PURPOSE, length=24)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def validate_alias(alias: str) -> str:
    if not 1 <= len(alias) <= ALIAS_MAX:
        shown = alias if len(alias) <= 40 else alias[:40] + "..."
        raise KeystoreError(f"an alias has 1 to {ALIAS_MAX} characters; '{shown}' has {len(alias)}")
    if not _ALIAS.fullmatch(alias):
        raise KeystoreError(
            f"the alias {alias!r} has characters an alias cannot have",
            hint="use letters, digits and . _ - @ +, starting with a letter or a digit",
        )
    return alias


def is_system_alias(alias: str) -> bool:
    return alias.lower().startswith(SYSTEM_PREFIX)


@dataclasses.dataclass(frozen=True)
class TrustedCertificate:
    """A certificate the tenant trusts: TLS peers are verified against these."""

    kind: ClassVar[str] = KIND_CERTIFICATE
    alias: str
    certificate: x509.Certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return (self.certificate,)

    @property
    def owner(self) -> str:
        return OWNER_SYSTEM if is_system_alias(self.alias) else OWNER_TENANT


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A private key with its certificate chain (end-entity first), e.g. a TLS client cert."""

    kind: ClassVar[str] = KIND_KEY_PAIR
    alias: str
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey = dataclasses.field(repr=False, compare=False)

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def owner(self) -> str:
        return OWNER_SYSTEM if is_system_alias(self.alias) else OWNER_TENANT


Entry = TrustedCertificate | KeyPair


def valid_until(entry: Entry) -> datetime.datetime:
    """When the entry stops being usable: the earliest end of validity in its chain."""
    return min(c.not_valid_after_utc for c in entry.chain)


class Keystore:
    """The content of one keystore file. Edits stay in memory until :meth:`save`."""

    def __init__(
        self, path: Path, password: str, entries: Iterable[Entry] = (), *, digest: str = ""
    ) -> None:
        self.path = path
        self._password = password
        self._entries: dict[str, Entry] = {}
        for entry in entries:
            if entry.alias.lower() in self._entries:
                raise KeystoreError(f"the keystore {path} has the alias '{entry.alias}' twice")
            self._entries[entry.alias.lower()] = entry
        self.digest = digest
        """SHA-256 of the file as read: a new value means the keystore changed."""

    # -- opening

    @classmethod
    def open(cls, tenant: Tenant, master_key: MasterKey | None = None) -> Keystore:
        key = master_key or load_master_key(tenant)
        return cls.load(tenant.keystore_path, keystore_password(key))

    @classmethod
    def load(cls, path: Path, password: str) -> Keystore:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(
                f"the keystore {path} does not exist",
                hint="restore it with `flowrt keystore restore BACKUP`",
            ) from None
        except OSError as exc:
            raise KeystoreError(f"cannot read the keystore {path}: {exc.strerror}") from exc
        return cls.from_bytes(data, password, path)

    @classmethod
    def from_bytes(cls, data: bytes, password: str, path: Path) -> Keystore:
        try:
            content = _pkcs12.parse(data, password)
        except _pkcs12.Pkcs12PasswordError:
            raise KeystoreError(
                f"the keystore {path} cannot be opened with the password derived from this "
                "master key, or it was modified",
                hint="check FLOWRT_MASTER_KEY or the tenant's master.key; "
                "if the file was damaged, use `flowrt keystore restore BACKUP`",
            ) from None
        except _pkcs12.Pkcs12FormatError as exc:
            raise KeystoreError(f"{path} is not a keystore flowrt can read: {exc}") from None
        entries: list[Entry] = [TrustedCertificate(a, c) for a, c in content.trusted]
        entries += [KeyPair(p.alias, p.chain, p.key) for p in content.key_pairs]
        return cls(path, password, entries, digest=hashlib.sha256(data).hexdigest())

    # -- reading

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.alias.lower()))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, alias: object) -> bool:
        return isinstance(alias, str) and alias.lower() in self._entries

    def get(self, alias: str) -> Entry:
        try:
            return self._entries[alias.lower()]
        except KeyError:
            raise KeystoreError(
                f"no keystore entry with alias '{alias}'", hint=_LIST_HINT
            ) from None

    def key_pair(self, alias: str) -> KeyPair:
        entry = self.get(alias)
        if not isinstance(entry, KeyPair):
            raise KeystoreError(
                f"the keystore entry '{alias}' is a certificate, not a key pair", hint=_LIST_HINT
            )
        return entry

    def trusted_certificates(self) -> list[x509.Certificate]:
        """The trust anchors for TLS: every trusted certificate entry."""
        return [e.certificate for e in self if isinstance(e, TrustedCertificate)]

    # -- editing

    def add_certificates(
        self,
        alias: str,
        certificates: Sequence[x509.Certificate],
        *,
        replace: bool = False,
        allow_system: bool = False,
    ) -> list[TrustedCertificate]:
        """Add trusted certificates as ``alias``, ``alias_1``, ``alias_2``... (file order)."""
        if not certificates:
            raise KeystoreError("no certificate to add")
        aliases = [alias] + [f"{alias}_{i}" for i in range(1, len(certificates))]
        for name in aliases:
            self.check_writable(name, replace=replace, allow_system=allow_system)
        added = [TrustedCertificate(a, c) for a, c in zip(aliases, certificates, strict=True)]
        for entry in added:
            self._entries[entry.alias.lower()] = entry
        return added

    def add_key_pair(
        self,
        alias: str,
        private_key: PrivateKey,
        chain: Sequence[x509.Certificate],
        *,
        replace: bool = False,
        allow_system: bool = False,
    ) -> KeyPair:
        if not chain:
            raise KeystoreError(f"the key pair '{alias}' has no certificate")
        if chain[0].public_key() != private_key.public_key():
            raise KeystoreError(f"the private key of '{alias}' does not match its certificate")
        self.check_writable(alias, replace=replace, allow_system=allow_system)
        entry = KeyPair(alias, tuple(chain), private_key)
        self._entries[alias.lower()] = entry
        return entry

    def rename(self, old: str, new: str, *, allow_system: bool = False) -> Entry:
        entry = self.get(old)
        if not allow_system:
            for name in (entry.alias, new):
                self._refuse_system(name)
        validate_alias(new)
        if new.lower() != old.lower() and new in self:
            raise KeystoreError(
                f"the alias '{new}' is already in use",
                hint="delete it first, or choose another alias",
            )
        del self._entries[old.lower()]
        renamed = dataclasses.replace(entry, alias=new)
        self._entries[new.lower()] = renamed
        return renamed

    def delete(self, alias: str, *, allow_system: bool = False) -> Entry:
        entry = self.get(alias)
        if not allow_system:
            self._refuse_system(entry.alias)
        del self._entries[alias.lower()]
        return entry

    def check_writable(self, alias: str, *, replace: bool, allow_system: bool = False) -> None:
        """Raise unless ``alias`` can be added (valid, not system, free or ``replace``)."""
        validate_alias(alias)
        if not allow_system:
            self._refuse_system(alias)
        if alias in self and not replace:
            raise KeystoreError(
                f"the alias '{self.get(alias).alias}' is already in the keystore",
                hint="use --replace to replace it, or choose another alias",
            )

    @staticmethod
    def _refuse_system(alias: str) -> None:
        if is_system_alias(alias):
            raise KeystoreError(
                f"the alias '{alias}' is a system entry ({SYSTEM_PREFIX}*) and is read-only",
                hint=f"choose an alias that does not start with {SYSTEM_PREFIX}",
            )

    # -- writing

    def to_bytes(self) -> bytes:
        entries = list(self)
        trusted = [(e.alias, e.certificate) for e in entries if isinstance(e, TrustedCertificate)]
        pairs = [
            _pkcs12.RawKeyPair(e.alias, e.private_key, e.chain)
            for e in entries
            if isinstance(e, KeyPair)
        ]
        return _pkcs12.build(trusted, pairs, self._password)

    def save(self) -> None:
        data = self.to_bytes()
        atomic_write(self.path, data)
        self.digest = hashlib.sha256(data).hexdigest()

    def __repr__(self) -> str:
        return f"Keystore({str(self.path)!r}, {len(self)} entries)"


@contextlib.contextmanager
def edit_keystore(tenant: Tenant, master_key: MasterKey | None = None) -> Iterator[Keystore]:
    """Lock, load, let the body change the keystore, save; an exception changes nothing."""
    key = master_key or load_master_key(tenant)
    with security_lock(tenant):
        keystore = Keystore.load(tenant.keystore_path, keystore_password(key))
        yield keystore
        keystore.save()


def create_empty_keystore(tenant: Tenant, master_key: MasterKey) -> None:
    Keystore(tenant.keystore_path, keystore_password(master_key)).save()


# ----------------------------------------------------------------------------- backups


def _timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def backup_keystore(tenant: Tenant, destination: Path | None = None) -> Path:
    """Copy the keystore file as it is to ``destination`` or a timestamped file in backups/."""
    source = tenant.keystore_path
    if not source.is_file():
        raise KeystoreError(f"the keystore {source} does not exist; nothing to back up")
    if destination is None:
        tenant.backups_dir.mkdir(mode=0o700, exist_ok=True)
        stem = f"keystore-{_timestamp()}"
        destination = tenant.backups_dir / f"{stem}.p12"
        counter = 1
        while destination.exists():
            destination = tenant.backups_dir / f"{stem}-{counter}.p12"
            counter += 1
    elif destination.is_dir():
        destination = destination / f"keystore-{_timestamp()}.p12"
    try:
        atomic_write(destination, source.read_bytes())
    except OSError as exc:
        raise KeystoreError(f"cannot write the backup {destination}: {exc.strerror}") from exc
    return destination


def restore_keystore(
    tenant: Tenant, source: Path, master_key: MasterKey | None = None
) -> tuple[Keystore, Path | None]:
    """Replace the keystore by ``source`` once it opens with this tenant's password.

    The keystore being replaced is backed up first; its backup path is returned (None when
    there was no keystore file to replace).
    """
    key = master_key or load_master_key(tenant)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(f"{source}: no such file") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        restored = Keystore.from_bytes(data, keystore_password(key), source)
    except KeystoreError as exc:
        if "cannot be opened with the password" not in exc.message:
            raise
        raise KeystoreError(
            exc.message,
            hint="a backup opens only with the tenant it came from; a file written with "
            "keytool or openssl must use the password `flowrt keystore password` prints",
        ) from None
    with security_lock(tenant):
        previous = backup_keystore(tenant) if tenant.keystore_path.exists() else None
        atomic_write(tenant.keystore_path, data)
    restored.path = tenant.keystore_path
    return restored, previous


__all__ = [
    "ALIAS_MAX",
    "KIND_CERTIFICATE",
    "KIND_KEY_PAIR",
    "SYSTEM_PREFIX",
    "Entry",
    "KeyPair",
    "Keystore",
    "TrustedCertificate",
    "backup_keystore",
    "create_empty_keystore",
    "edit_keystore",
    "is_system_alias",
    "keystore_password",
    "restore_keystore",
    "valid_until",
    "validate_alias",
]
