"""A test certificate authority for the loopback servers (root -> intermediate -> leaf).

Everything is generated in memory with ``cryptography``; nothing touches the system trust
store. Typical use::

    root = TestCA()                          # "flowrt Test Root CA"
    inter = root.new_intermediate()          # "flowrt Test Intermediate CA", signed by root
    cert = inter.issue_server_cert()         # localhost, 127.0.0.1, ::1, mail.*.example
    chain_file, key_file = cert.write(tmpdir)
    ctx = root.client_context()              # trusts only the root, checks host names

A leaf issued by an intermediate carries the intermediate in ``chain_pem`` (leaf first, root
never included), which is what a server must send.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_SERVER_NAMES", "KeyType", "ServerCert", "TestCA"]

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DEFAULT_SERVER_NAMES: tuple[str, ...] = (
    "localhost",
    "127.0.0.1",
    "::1",
    "mail.test.example",
    "mail.plant.example",
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key_type must be 'rsa' or 'ec', not {key_type!r}")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


@dataclass(frozen=True)
class ServerCert:
    """A leaf certificate with its key. ``chain_pem`` = leaf + intermediates (no root)."""

    names: tuple[str, ...]
    certificate: x509.Certificate
    cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes
    issuer_cn: str
    not_before: dt.datetime
    not_after: dt.datetime
    paths: dict[str, Path] = field(default_factory=dict, compare=False)

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def subject_cn(self) -> str:
        attrs = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""

    @property
    def combined_pem(self) -> bytes:
        """Key followed by the chain: the layout Postfix' ``smtpd_tls_chain_files`` takes."""
        return self.key_pem + self.chain_pem

    def write(self, directory: str | Path, stem: str = "server") -> tuple[Path, Path]:
        """Write ``STEM.chain.pem`` (leaf + intermediates) and ``STEM.key.pem`` (mode 0600).

        Returns ``(chain_path, key_path)``; the paths are also kept in ``self.paths``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        chain_path = directory / f"{stem}.chain.pem"
        key_path = directory / f"{stem}.key.pem"
        cert_path = directory / f"{stem}.cert.pem"
        chain_path.write_bytes(self.chain_pem)
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)
        self.paths.update(chain=chain_path, key=key_path, cert=cert_path)
        return chain_path, key_path

    def server_context(self) -> ssl.SSLContext:
        """An SSLContext for a Python TLS server presenting this certificate and chain."""
        import tempfile

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="flowrt-cert-") as tmp:
            chain_path = Path(tmp, "chain.pem")
            key_path = Path(tmp, "key.pem")
            chain_path.write_bytes(self.chain_pem)
            key_path.write_bytes(self.key_pem)
            ctx.load_cert_chain(chain_path, key_path)
        return ctx


class TestCA:
    """A certificate authority for tests: a self-signed root, or an intermediate (``parent``)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        common_name: str = "flowrt Test Root CA",
        *,
        key_type: KeyType = "ec",
        parent: TestCA | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        organization: str = "flowrt tests",
    ) -> None:
        self.subject_cn = common_name
        self.parent = parent
        self.private_key: PrivateKey = _new_key(key_type)
        self.subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = _now()
        not_before = not_before or now - dt.timedelta(days=1)
        not_after = not_after or now + dt.timedelta(days=3650)
        issuer_name = parent.subject if parent else self.subject
        signing_key = parent.private_key if parent else self.private_key
        public_key = self.private_key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(self.subject)
            .issuer_name(issuer_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.BasicConstraints(ca=True, path_length=None if parent is None else 0),
                critical=True,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if parent is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.private_key.public_key()),
                critical=False,
            )
        self.certificate: x509.Certificate = builder.sign(signing_key, hashes.SHA256())

    # -- the CA's own certificate -------------------------------------------------------

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.private_key)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def root(self) -> TestCA:
        ca = self
        while ca.parent is not None:
            ca = ca.parent
        return ca

    @property
    def chain_pem(self) -> bytes:
        """This CA's certificate followed by its non-root ancestors (what a server sends)."""
        out = b""
        ca: TestCA | None = self
        while ca is not None and ca.parent is not None:
            out += ca.cert_pem
            ca = ca.parent
        return out

    def write_cert(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.cert_pem)
        return path

    def new_intermediate(
        self, common_name: str = "flowrt Test Intermediate CA", *, key_type: KeyType = "ec"
    ) -> TestCA:
        """A CA signed by this one (root -> intermediate)."""
        return TestCA(common_name, key_type=key_type, parent=self)

    # -- leaf certificates ----------------------------------------------------------------

    def issue_server_cert(
        self,
        names: Sequence[str] = DEFAULT_SERVER_NAMES,
        *,
        common_name: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_type: KeyType = "rsa",
    ) -> ServerCert:
        """Issue a TLS server certificate for ``names`` (DNS names and IP addresses).

        Pass ``not_after`` in the past for an expired certificate, or other names for a
        certificate that does not match the host a client connects to.
        """
        if not names:
            raise ValueError("a server certificate needs at least one name")
        now = _now()
        not_before = not_before or now - dt.timedelta(hours=1)
        not_after = not_after or now + dt.timedelta(days=825)
        if not_after <= not_before:
            raise ValueError("not_after must be later than not_before")
        key = _new_key(key_type)
        cn = common_name or names[0]
        public_key = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=key_type == "rsa",
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
            .sign(self.private_key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return ServerCert(
            names=tuple(names),
            certificate=cert,
            cert_pem=cert_pem,
            chain_pem=cert_pem + self.chain_pem,
            key_pem=_key_pem(key),
            issuer_cn=self.subject_cn,
            not_before=not_before,
            not_after=not_after,
        )

    # -- clients --------------------------------------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        """A client SSLContext trusting only this CA's root, with host name checking."""
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cadata=self.root.cert_pem.decode()
        )
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def __repr__(self) -> str:
        kind = "root" if self.is_root else f"intermediate of {self.parent.subject_cn!r}"  # type: ignore[union-attr]
        return f"<TestCA {self.subject_cn!r} ({kind})>"
