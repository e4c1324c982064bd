"""The connector's TOML configuration: reading, validation, and the token check.

Every problem raises :class:`~flowrt.errors.ConnectorError` naming the file and the key
(``connector.toml: mapping[2].internal: ...``), so an operator can fix it without guessing.
The format is shown in ``flowrt/connector/example.toml``::

    location_id = "plant-1"
    listen = "127.0.0.1:1080"              # "[::1]:1080" for IPv6; default 127.0.0.1:1080
    token_env = "FLOWRT_CONNECTOR_TOKEN"   # exactly one of token_env, token_file, token_sha256
    idle_timeout = "5m"                    # durations: 30s, 5m, 1h, 500ms, or seconds
    handshake_timeout = "10s"
    connect_timeout = "10s"
    max_connections = 100

    [tls]
    truststore = "ca.pem"                  # PEM bundle; relative to this file

    [[mapping]]
    virtual = "mail.plant.example:993"
    internal = "10.0.0.5:993"
    protocol = "tcp-tls"                   # or "tcp"
    tls_name = "mail.plant.example"        # optional; default: the internal host

The access token never stands in the file in clear text. It comes from an environment
variable, from a file only its owner can read (mode 0600), or the file holds its SHA-256
(``token_sha256``, made by ``flowrt connector hash-token``). A plain hash suffices because
the token is a long random string, not a password a person chose: there is nothing to
brute-force that a salt or a slow hash would protect. In memory only the digest is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import ssl
import stat
import string
import tomllib
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Any, Literal

from flowrt._hosts import is_host
from flowrt.connector.socks5 import normalize_host
from flowrt.dsl.values import parse_duration, split_host_port
from flowrt.errors import ConnectorError

__all__ = [
    "DEFAULT_LISTEN",
    "ConnectorConfig",
    "Mapping",
    "Protocol",
    "TokenCheck",
    "format_address",
    "hash_token",
    "load_config",
    "parse_config",
    "token_problem",
]

Protocol = Literal["tcp", "tcp-tls"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "tcp-tls")
DEFAULT_LISTEN = ("127.0.0.1", 1080)
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 100
TOKEN_MAX = 255  # an RFC 1929 password is at most 255 bytes
TOKEN_MIN = 16  # shorter is guessable; `flowrt connector new-token` makes 43 characters

_LOCATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN_CHARS = frozenset(string.printable) - frozenset(string.whitespace)
_TOP_KEYS = {
    "location_id",
    "listen",
    "token_env",
    "token_file",
    "token_sha256",
    "idle_timeout",
    "handshake_timeout",
    "connect_timeout",
    "max_connections",
    "tls",
    "mapping",
}
_MAPPING_KEYS = {"virtual", "internal", "protocol", "tls_name"}
_TLS_KEYS = {"truststore"}


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hash_token(token: str | bytes) -> str:
    """The ``token_sha256`` value for a token."""
    raw = token.encode("utf-8") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


class TokenCheck:
    """Checks a SOCKS password against the access token, in constant time.

    Holds only the SHA-256 of the token; ``source`` says where it came from (for the log).
    """

    __slots__ = ("_digest", "source")

    def __init__(self, digest: bytes, source: str) -> None:
        self._digest = digest
        self.source = source

    @classmethod
    def from_token(cls, token: str, source: str) -> TokenCheck:
        return cls(hashlib.sha256(token.encode("utf-8")).digest(), source)

    def matches(self, password: bytes) -> bool:
        return hmac.compare_digest(hashlib.sha256(password).digest(), self._digest)

    def __repr__(self) -> str:
        return f"TokenCheck(source={self.source!r})"


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One virtual ``host:port`` the cloud side may ask for, and where it really goes."""

    virtual_host: str
    virtual_port: int
    internal_host: str
    internal_port: int
    protocol: Protocol
    tls_name: str | None = None

    @property
    def virtual(self) -> str:
        return format_address(self.virtual_host, self.virtual_port)

    @property
    def internal(self) -> str:
        return format_address(self.internal_host, self.internal_port)

    @property
    def server_hostname(self) -> str:
        """The name the back end's certificate must carry (``tcp-tls`` only)."""
        return self.tls_name or self.internal_host

    def describe(self) -> str:
        return f"{self.virtual} -> {self.internal} ({self.protocol})"


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    path: Path
    location_id: str
    listen_host: str
    listen_port: int
    token: TokenCheck
    mappings: tuple[Mapping, ...]
    truststore: Path | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Built once at load so that a bad truststore fails at start, not at the first client.
    tls_context: ssl.SSLContext | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def listen(self) -> str:
        return format_address(self.listen_host, self.listen_port)

    def find(self, host: str, port: int) -> Mapping | None:
        """The mapping for a requested virtual ``host:port`` (host normalized), if any."""
        for mapping in self.mappings:
            if mapping.virtual_port == port and mapping.virtual_host == host:
                return mapping
        return None


def load_config(
    path: str | Path, *, environ: MappingABC[str, str] | None = None
) -> ConnectorConfig:
    """Read and validate ``path``. ``environ`` (default ``os.environ``) serves ``token_env``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConnectorError(f"the connector configuration {path} does not exist") from None
    except OSError as exc:
        raise ConnectorError(
            f"cannot read the connector configuration {path}: {exc.strerror}"
        ) from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConnectorError(f"{path}: the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConnectorError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(document, path, environ=os.environ if environ is None else environ)


def parse_config(
    document: dict[str, Any], path: Path, *, environ: MappingABC[str, str]
) -> ConnectorConfig:
    """Validate a parsed TOML document; relative paths are taken from ``path``'s folder."""
    reader = _Reader(path)
    reader.unknown_keys(document, _TOP_KEYS, "")
    base = path.parent

    location_id = reader.string(document, "location_id", required=True)
    assert location_id is not None
    if not _LOCATION_ID.fullmatch(location_id):
        reader.fail(
            "location_id",
            f"{location_id!r} is not a location ID",
            hint="use 1 to 100 letters, digits and . _ -, starting with a letter or a digit",
        )

    listen_text = reader.string(document, "listen")
    if listen_text is None:
        listen_host, listen_port = DEFAULT_LISTEN
    else:
        listen_host, listen_port = reader.address(listen_text, "listen", allow_port_zero=True)

    token = _token(reader, document, base, environ)

    truststore: Path | None = None
    tls_table = document.get("tls", {})
    if not isinstance(tls_table, dict):
        reader.fail("tls", "must be a table: [tls]")
    reader.unknown_keys(tls_table, _TLS_KEYS, "tls.")
    truststore_text = reader.string(tls_table, "truststore", key="tls.truststore")
    if truststore_text is not None:
        truststore = base / truststore_text

    raw_mappings = document.get("mapping", [])
    if not isinstance(raw_mappings, list) or not all(isinstance(m, dict) for m in raw_mappings):
        reader.fail("mapping", "must be a list of tables: [[mapping]]")
    mappings: list[Mapping] = []
    seen: dict[tuple[str, int], int] = {}
    for index, item in enumerate(raw_mappings, start=1):
        mapping = _mapping(reader, item, f"mapping[{index}]")
        key = (mapping.virtual_host, mapping.virtual_port)
        if key in seen:
            reader.fail(
                f"mapping[{index}].virtual",
                f"{mapping.virtual} is mapped twice (also in mapping[{seen[key]}])",
            )
        seen[key] = index
        mappings.append(mapping)
    if not mappings:
        reader.fail(
            "mapping",
            "no mapping: the connector would refuse every request",
            hint='add one: [[mapping]] virtual = "mail.plant.example:143" '
            'internal = "10.0.0.5:143" protocol = "tcp"',
        )

    tls_context: ssl.SSLContext | None = None
    needs_tls = [m for m in mappings if m.protocol == "tcp-tls"]
    if truststore is not None:
        tls_context = _truststore_context(reader, truststore)
    elif needs_tls:
        reader.fail(
            "tls.truststore",
            f"missing, but {needs_tls[0].virtual} is a tcp-tls mapping: the connector "
            "verifies the back end's certificate against its own truststore",
            hint='add [tls] truststore = "ca.pem" with the root (and intermediate) '
            "certificates of the mail server",
        )

    return ConnectorConfig(
        path=path,
        location_id=location_id,
        listen_host=listen_host,
        listen_port=listen_port,
        token=token,
        mappings=tuple(mappings),
        truststore=truststore,
        idle_timeout=reader.duration(document, "idle_timeout", DEFAULT_IDLE_TIMEOUT),
        handshake_timeout=reader.duration(document, "handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT),
        connect_timeout=reader.duration(document, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        max_connections=reader.positive_int(document, "max_connections", DEFAULT_MAX_CONNECTIONS),
        tls_context=tls_context,
    )


def _mapping(reader: _Reader, item: dict[str, Any], where: str) -> Mapping:
    reader.unknown_keys(item, _MAPPING_KEYS, f"{where}.")
    virtual = reader.string(item, "virtual", key=f"{where}.virtual", required=True)
    internal = reader.string(item, "internal", key=f"{where}.internal", required=True)
    protocol = reader.string(item, "protocol", key=f"{where}.protocol", required=True)
    tls_name = reader.string(item, "tls_name", key=f"{where}.tls_name")
    assert virtual is not None and internal is not None and protocol is not None
    v_host, v_port = reader.address(virtual, f"{where}.virtual")
    i_host, i_port = reader.address(internal, f"{where}.internal")
    if protocol not in PROTOCOLS:
        reader.fail(
            f"{where}.protocol",
            f"{protocol!r} is not a protocol; expected 'tcp' or 'tcp-tls'",
            hint="tcp passes bytes through (plain or STARTTLS, trust in the tenant keystore); "
            "tcp-tls makes the connector do TLS to the back end (trust in tls.truststore)",
        )
    if tls_name is not None:
        if protocol != "tcp-tls":
            reader.fail(f"{where}.tls_name", "only a tcp-tls mapping checks a TLS name")
        if not is_host(tls_name):
            reader.fail(f"{where}.tls_name", f"{tls_name!r} is not a host name or IP address")
    return Mapping(
        virtual_host=normalize_host(v_host),
        virtual_port=v_port,
        internal_host=i_host,
        internal_port=i_port,
        protocol="tcp-tls" if protocol == "tcp-tls" else "tcp",
        tls_name=tls_name,
    )


def _token(
    reader: _Reader, document: dict[str, Any], base: Path, environ: MappingABC[str, str]
) -> TokenCheck:
    given = [k for k in ("token_env", "token_file", "token_sha256") if k in document]
    hint = (
        'set token_env = "FLOWRT_CONNECTOR_TOKEN" (the variable holds the token), '
        'token_file = "connector.token" (mode 0600), or token_sha256 = "..." '
        "(from `flowrt connector hash-token`)"
    )
    if not given:
        reader.fail("token_env", "no access token source is configured", hint=hint)
    if len(given) > 1:
        reader.fail(given[1], f"give only one of {', '.join(given)}", hint=hint)
    key = given[0]
    value = reader.string(document, key)
    assert value is not None
    if key == "token_sha256":
        if not _SHA256_HEX.fullmatch(value):
            reader.fail(key, "expected 64 hexadecimal digits (a SHA-256)", hint=hint)
        return TokenCheck(bytes.fromhex(value), "token_sha256")
    if key == "token_env":
        token = environ.get(value, "")
        if not token.strip():
            reader.fail(
                key,
                f"the environment variable {value} is not set or empty",
                hint=f"export {value}=... with the location's access token before starting",
            )
        return TokenCheck.from_token(_check_token(reader, key, token.strip()), f"env {value}")
    token_path = base / value
    try:
        st = token_path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            reader.fail(
                key,
                f"the token file {token_path} can be read by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"chmod 600 {token_path}",
            )
        text = token_path.read_text(encoding="utf-8")
    except OSError as exc:
        reader.fail(key, f"cannot read the token file {token_path}: {exc.strerror}")
    except UnicodeDecodeError:
        reader.fail(key, f"the token file {token_path} is not UTF-8 text")
    return TokenCheck.from_token(_check_token(reader, key, text.strip()), f"file {token_path}")


def token_problem(token: str) -> str | None:
    """What is wrong with a token, or None. Never quotes the token itself."""
    size = len(token.encode("utf-8"))
    if not TOKEN_MIN <= size <= TOKEN_MAX:
        return f"the token must be {TOKEN_MIN} to {TOKEN_MAX} bytes long, not {size}"
    if not set(token) <= _TOKEN_CHARS:
        return "the token must be printable ASCII without spaces"
    return None


def _check_token(reader: _Reader, key: str, token: str) -> str:
    problem = token_problem(token)
    if problem is not None:
        reader.fail(key, problem, hint="make one with `flowrt connector new-token`")
    return token


def _truststore_context(reader: _Reader, truststore: Path) -> ssl.SSLContext:
    # Only this bundle is trusted: no system CAs, so trust is exactly what the operator put here.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(truststore))
    except FileNotFoundError:
        reader.fail("tls.truststore", f"{truststore} does not exist")
    except ssl.SSLError as exc:  # before OSError, of which it is a subclass
        reader.fail(
            "tls.truststore",
            f"{truststore} holds no PEM certificate ({exc.reason or exc})",
            hint="the truststore is a PEM bundle: -----BEGIN CERTIFICATE----- blocks",
        )
    except OSError as exc:
        reader.fail("tls.truststore", f"cannot read {truststore}: {exc.strerror}")
    if not context.get_ca_certs():
        reader.fail("tls.truststore", f"{truststore} holds no CA certificate")
    return context


class _Reader:
    """Typed access to the TOML values; every failure names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str, *, hint: str | None = None) -> Any:
        raise ConnectorError(f"{self.path}: {key}: {message}", hint=hint)

    def unknown_keys(self, table: dict[str, Any], known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                self.fail(
                    f"{prefix}{key}",
                    "unknown key",
                    hint=f"known keys here: {', '.join(sorted(known))}",
                )

    def string(
        self, table: dict[str, Any], name: str, *, key: str | None = None, required: bool = False
    ) -> str | None:
        key = key or name
        if name not in table:
            if required:
                self.fail(key, "missing")
            return None
        value = table[name]
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, not {value!r}")
        return str(value).strip()

    def address(self, text: str, key: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
        port = -1
        if allow_port_zero and text.endswith(":0"):
            # Port 0 (any free port, reported in the "listening" line) is for tests; the
            # shared parser refuses it, so parse with a stand-in port and put 0 back.
            text, port = text[:-2] + ":1", 0
        try:
            host, parsed = split_host_port(text)
        except ValueError as exc:
            self.fail(key, f"{text!r} is not HOST:PORT ({exc})")
        if parsed is None:
            self.fail(key, f"{text!r} has no port; write HOST:PORT, e.g. mail.plant.example:143")
        if not is_host(host):
            self.fail(key, f"{host!r} is not a host name or IP address")
        assert parsed is not None
        return host, parsed if port < 0 else port

    def duration(self, table: dict[str, Any], key: str, default: float) -> float:
        if key not in table:
            return default
        value = table[key]
        seconds: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            parsed = parse_duration(value.strip())
            seconds = parsed.total_seconds() if parsed is not None else None
        if seconds is None or seconds <= 0:
            self.fail(
                key,
                f"{value!r} is not a positive duration",
                hint='write a number and a unit (ms, s, m, h), e.g. "30s" or "5m", '
                "or a number of seconds",
            )
        assert seconds is not None
        return seconds

    def positive_int(self, table: dict[str, Any], key: str, default: int) -> int:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(key, f"expected a whole number of at least 1, not {value!r}")
        return int(value)
