"""The tenant credential store: named user/password pairs and other secrets, encrypted.

One file, ``credentials.enc``, rewritten whole and atomically on every change::

    magic "FLOWRTCS" | version (1 byte) | salt (16) | nonce (12) | AES-256-GCM(JSON) + tag

The AES key is derived from the master key with HKDF-SHA256 and the file's random salt, and
the nonce is random for every write, so no key/nonce pair is ever used twice. The header is
authenticated (it is the GCM associated data): changing the version or the salt, truncating or
flipping any byte, or using another master key all end in the same clear CredentialError,
never in garbage.

Credentials come back as frozen objects whose secrets are :class:`Secret` values, so that a
credential that is logged or put into an exception message by mistake shows ``********``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flowrt._fs import atomic_write
from flowrt.errors import CredentialError
from flowrt.security._lock import security_lock
from flowrt.security.masterkey import MasterKey, load_master_key
from flowrt.security.secret import Secret
from flowrt.tenant import Tenant

KIND_USER = "user"
KIND_SECURE_PARAMETER = "secure-parameter"
KIND_OAUTH2 = "oauth2-client-credentials"
KIND_OAUTH2_REFRESH = "oauth2-refresh-token"
# what `credentials add --kind` takes; a refresh token comes from `credentials oauth2-login`
KINDS = (KIND_USER, KIND_SECURE_PARAMETER, KIND_OAUTH2)

NAME_MAX = 150
MAGIC = b"FLOWRTCS"
FORMAT_VERSION = 1
_SALT_SIZE = 16
_NONCE_SIZE = 12
_HEADER_SIZE = len(MAGIC) + 1 + _SALT_SIZE + _NONCE_SIZE
_TAG_SIZE = 16
_KEY_PURPOSE = "credential-store/v1"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclasses.dataclass(frozen=True)
class UserCredential:
    """A user name and password, for SMTP/IMAP/POP3 login or the SOCKS5 connector."""

    kind: ClassVar[str] = KIND_USER
    name: str
    user: str
    password: Secret
    changed: datetime.datetime = dataclasses.field(default_factory=_now)


@dataclasses.dataclass(frozen=True)
class SecureParameter:
    """One secret value, such as a connector token."""

    kind: ClassVar[str] = KIND_SECURE_PARAMETER
    name: str
    value: Secret
    changed: datetime.datetime = dataclasses.field(default_factory=_now)


@dataclasses.dataclass(frozen=True)
class OAuth2ClientCredentials:
    """What an OAuth 2.0 client-credentials grant needs (XOAUTH2 for mail servers)."""

    kind: ClassVar[str] = KIND_OAUTH2
    name: str
    token_url: str
    client_id: str
    client_secret: Secret
    scope: str | None = None
    changed: datetime.datetime = dataclasses.field(default_factory=_now)


@dataclasses.dataclass(frozen=True)
class OAuth2RefreshToken:
    """Delegated OAuth 2.0 access to one mailbox: a refresh token from the authorization-code
    flow (`flowrt credentials oauth2-login`), exchanged for access tokens as they expire.

    ``provider`` (microsoft, google, custom) and ``authorize_url`` are kept so that the hint
    after a revoked refresh token can name the exact login command to run again.
    """

    kind: ClassVar[str] = KIND_OAUTH2_REFRESH
    name: str
    token_url: str
    client_id: str
    refresh_token: Secret
    client_secret: Secret | None = None
    scope: str | None = None
    user: str | None = None
    provider: str = "custom"
    authorize_url: str | None = None
    changed: datetime.datetime = dataclasses.field(default_factory=_now)
    rotated: datetime.datetime | None = None


OAuth2Credential = OAuth2ClientCredentials | OAuth2RefreshToken
Credential = UserCredential | SecureParameter | OAuth2ClientCredentials | OAuth2RefreshToken


def validate_name(name: str) -> str:
    """Credential names: 1..150 characters, no whitespace, no control characters."""
    if not 1 <= len(name) <= NAME_MAX:
        raise CredentialError(
            f"a credential name has 1 to {NAME_MAX} characters, "
            f"'{name[:40]}{'...' if len(name) > 40 else ''}' has {len(name)}"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        raise CredentialError(
            f"the credential name {name!r} contains whitespace or control characters"
        )
    return name


def describe(credential: Credential) -> dict[str, Any]:
    """The public fields of a credential (never the secret), for listings."""
    row: dict[str, Any] = {"name": credential.name, "kind": credential.kind}
    if isinstance(credential, UserCredential):
        row["user"] = credential.user
    elif isinstance(credential, OAuth2ClientCredentials):
        row["token_url"] = credential.token_url
        row["client_id"] = credential.client_id
        row["scope"] = credential.scope
    elif isinstance(credential, OAuth2RefreshToken):
        row["user"] = credential.user
        row["provider"] = credential.provider
        row["token_url"] = credential.token_url
        row["client_id"] = credential.client_id
        row["scope"] = credential.scope
        row["rotated"] = credential.rotated.isoformat() if credential.rotated else None
    row["changed"] = credential.changed.isoformat()
    return row


class CredentialStore:
    """The decrypted content of one credential store file; edits are saved by :meth:`save`."""

    def __init__(self, path: Path, master_key: MasterKey, credentials: list[Credential]) -> None:
        self.path = path
        self._master_key = master_key
        self._credentials = {c.name: c for c in credentials}

    # -- opening

    @classmethod
    def open(cls, tenant: Tenant, master_key: MasterKey | None = None) -> CredentialStore:
        """The tenant's store (the master key is loaded from the tenant when not given)."""
        key = master_key or load_master_key(tenant)
        return cls.load(tenant.credentials_path, key)

    @classmethod
    def load(cls, path: Path, master_key: MasterKey) -> CredentialStore:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CredentialError(
                f"the credential store {path} does not exist",
                hint="restore it from a backup (an empty one is made by `flowrt init`)",
            ) from None
        except OSError as exc:
            raise CredentialError(f"cannot read the credential store {path}: {exc}") from exc
        payload = _decrypt(data, master_key, path)
        try:
            document = json.loads(payload.decode("utf-8"))
            credentials = [_from_json(item) for item in document["credentials"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CredentialError(
                f"the credential store {path} decrypts but its content is not valid ({exc})"
            ) from exc
        return cls(path, master_key, credentials)

    @classmethod
    def empty(cls, path: Path, master_key: MasterKey) -> CredentialStore:
        return cls(path, master_key, [])

    # -- reading

    def get(self, name: str) -> Credential:
        try:
            return self._credentials[name]
        except KeyError:
            raise CredentialError(
                f"no credential named '{name}' in the credential store",
                hint="see `flowrt credentials list`; add one with `flowrt credentials add`",
            ) from None

    def get_user(self, name: str) -> UserCredential:
        """A ``user`` credential (what mail logins and the SOCKS5 connector take)."""
        credential = self.get(name)
        if not isinstance(credential, UserCredential):
            raise CredentialError(
                f"the credential '{name}' is of kind {credential.kind}, "
                f"but a {KIND_USER} credential (user and password) is needed here"
            )
        return credential

    def __contains__(self, name: object) -> bool:
        return name in self._credentials

    def __iter__(self) -> Iterator[Credential]:
        return iter(sorted(self._credentials.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._credentials)

    # -- editing

    def put(self, credential: Credential, *, replace: bool = False) -> None:
        validate_name(credential.name)
        if credential.name in self._credentials and not replace:
            raise CredentialError(
                f"a credential named '{credential.name}' already exists",
                hint="use --replace to change it",
            )
        self._credentials[credential.name] = credential

    def replace_refresh_token(self, name: str, used: Secret, new: Secret) -> bool:
        """Store the refresh token an identity provider rotated ``used`` into, unless the
        stored one is no longer ``used`` (a new login replaced it meanwhile: that one wins)."""
        credential = self._credentials.get(name)
        if not isinstance(credential, OAuth2RefreshToken):
            return False
        if credential.refresh_token.reveal() != used.reveal():
            return False
        self._credentials[name] = dataclasses.replace(credential, refresh_token=new, rotated=_now())
        return True

    def delete(self, name: str) -> Credential:
        credential = self.get(name)
        del self._credentials[name]
        return credential

    def to_bytes(self) -> bytes:
        document = {"credentials": [_to_json(c) for c in self]}
        return _encrypt(json.dumps(document).encode("utf-8"), self._master_key)

    def save(self) -> None:
        atomic_write(self.path, self.to_bytes())

    def __repr__(self) -> str:
        return f"CredentialStore({str(self.path)!r}, {len(self)} credentials)"


@contextlib.contextmanager
def edit_credentials(
    tenant: Tenant, master_key: MasterKey | None = None
) -> Iterator[CredentialStore]:
    """Lock, load, let the body change the store, save; an exception leaves the file as it was."""
    key = master_key or load_master_key(tenant)
    with security_lock(tenant):
        store = CredentialStore.load(tenant.credentials_path, key)
        yield store
        store.save()


# ----------------------------------------------------------------------------- file format


def _aes(master_key: MasterKey, salt: bytes) -> AESGCM:
    return AESGCM(master_key.derive(_KEY_PURPOSE, salt=salt))


def _encrypt(payload: bytes, master_key: MasterKey) -> bytes:
    salt = os.urandom(_SALT_SIZE)
    nonce = os.urandom(_NONCE_SIZE)
    header = MAGIC + bytes([FORMAT_VERSION]) + salt + nonce
    return header + _aes(master_key, salt).encrypt(nonce, payload, header)


def _decrypt(data: bytes, master_key: MasterKey, path: Path) -> bytes:
    undecryptable = CredentialError(
        f"the credential store {path} cannot be decrypted with this master key, or it was modified",
        hint="check FLOWRT_MASTER_KEY or the tenant's master.key; "
        "if the file was damaged, restore it from a backup",
    )
    if not data.startswith(MAGIC):
        if len(data) < len(MAGIC):
            raise undecryptable
        raise CredentialError(f"{path} is not a flowrt credential store (unknown header)")
    if len(data) < _HEADER_SIZE + _TAG_SIZE:
        raise undecryptable
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise CredentialError(
            f"the credential store {path} has format version {version}; "
            f"this flowrt reads version {FORMAT_VERSION}",
            hint="use the flowrt release that wrote it",
        )
    salt = data[len(MAGIC) + 1 : len(MAGIC) + 1 + _SALT_SIZE]
    nonce = data[len(MAGIC) + 1 + _SALT_SIZE : _HEADER_SIZE]
    try:
        return _aes(master_key, salt).decrypt(nonce, data[_HEADER_SIZE:], data[:_HEADER_SIZE])
    except InvalidTag:
        raise undecryptable from None


def _to_json(credential: Credential) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": credential.name,
        "kind": credential.kind,
        "changed": credential.changed.isoformat(),
    }
    if isinstance(credential, UserCredential):
        item.update(user=credential.user, password=credential.password.reveal())
    elif isinstance(credential, SecureParameter):
        item.update(value=credential.value.reveal())
    elif isinstance(credential, OAuth2RefreshToken):
        secret = credential.client_secret
        item.update(
            token_url=credential.token_url,
            client_id=credential.client_id,
            refresh_token=credential.refresh_token.reveal(),
            client_secret=secret.reveal() if secret is not None else None,
            scope=credential.scope,
            user=credential.user,
            provider=credential.provider,
            authorize_url=credential.authorize_url,
            rotated=credential.rotated.isoformat() if credential.rotated else None,
        )
    else:
        item.update(
            token_url=credential.token_url,
            client_id=credential.client_id,
            client_secret=credential.client_secret.reveal(),
            scope=credential.scope,
        )
    return item


def _from_json(item: dict[str, Any]) -> Credential:
    name = str(item["name"])
    changed = datetime.datetime.fromisoformat(item["changed"])
    kind = item["kind"]
    if kind == KIND_USER:
        return UserCredential(name, str(item["user"]), Secret(item["password"]), changed)
    if kind == KIND_SECURE_PARAMETER:
        return SecureParameter(name, Secret(item["value"]), changed)
    if kind == KIND_OAUTH2:
        return OAuth2ClientCredentials(
            name,
            str(item["token_url"]),
            str(item["client_id"]),
            Secret(item["client_secret"]),
            item.get("scope"),
            changed,
        )
    if kind == KIND_OAUTH2_REFRESH:
        secret, rotated = item.get("client_secret"), item.get("rotated")
        return OAuth2RefreshToken(
            name,
            str(item["token_url"]),
            str(item["client_id"]),
            Secret(item["refresh_token"]),
            Secret(secret) if secret is not None else None,
            item.get("scope"),
            item.get("user"),
            str(item.get("provider") or "custom"),
            item.get("authorize_url"),
            changed,
            datetime.datetime.fromisoformat(rotated) if rotated else None,
        )
    raise ValueError(f"unknown credential kind {kind!r}")
