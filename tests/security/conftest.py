"""Fixtures for the security tests: certificates made on the spot, and a CLI on a tenant."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID

from flowrt.cli.main import cli
from flowrt.security import tls
from flowrt.tenant import Tenant

UTC = datetime.UTC


@dataclasses.dataclass
class Issued:
    key: Any
    cert: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class Pki:
    """Makes CAs, intermediates and leaf certificates, and writes them in every format."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def issue(
        self,
        cn: str,
        *,
        issuer: Issued | None = None,
        ca: bool = False,
        days: float = 365,
        expired: bool = False,
        key: str = "ec",
        dns: Sequence[str] = (),
    ) -> Issued:
        private: Any = (
            ec.generate_private_key(ec.SECP256R1())
            if key == "ec"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = datetime.datetime.now(UTC)
        start = now - datetime.timedelta(days=400 if expired else 1)
        end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.cert.subject if issuer else name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
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
        if dns:
            names: list[x509.GeneralName] = []
            for item in dns:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(item)))
                except ValueError:
                    names.append(x509.DNSName(item))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        signer = issuer.key if issuer else private
        return Issued(private, builder.sign(signer, hashes.SHA256()))

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def p7b(self, certs: Sequence[Issued], *, pem: bool = False) -> bytes:
        encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
        return pkcs7.serialize_certificates([c.cert for c in certs], encoding)

    def p12(self, leaf: Issued, chain: Sequence[Issued], password: str) -> bytes:
        return pkcs12.serialize_key_and_certificates(
            b"exported",
            leaf.key,
            leaf.cert,
            [c.cert for c in chain],
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption(),
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return Pki(folder)


@pytest.fixture(scope="session")
def root_ca() -> Issued:
    return Pki(Path(".")).issue("Test Root CA", ca=True, days=3650)


class Cli:
    """``flowrt --tenant DIR ...`` through click's CliRunner; the tenant's files on the side."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tenant = Tenant(root)
        self.runner = CliRunner()
        self.results: list[Result] = []

    def __call__(
        self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None
    ) -> Result:
        result = self.runner.invoke(
            cli,
            ["--tenant", str(self.root), *args],
            input=input,
            env=env,
            catch_exceptions=False,
        )
        self.results.append(result)
        return result

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
        return result

    def fails(self, *args: str, code: int = 1, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
        return result

    def snapshot(self) -> dict[str, str]:
        """A hash of every file in the tenant, to show a failed command changed nothing."""
        return {
            str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.root.rglob("*"))
            if p.is_file() and p.name != ".security.lock"
        }


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("FLOWRT_MASTER_KEY", raising=False)
    monkeypatch.delenv("FLOWRT_HOME", raising=False)
    tls.clear_cache()
    yield
    tls.clear_cache()


@pytest.fixture
def make_cli(tmp_path: Path) -> Callable[[str], Cli]:
    """Another tenant (by folder name) beside the test's own."""
    return lambda name: Cli(tmp_path / name)


@pytest.fixture
def new_cli(tmp_path: Path) -> Cli:
    """A CLI on a tenant directory that does not exist yet."""
    return Cli(tmp_path / "tenant")


@pytest.fixture
def flowrt(new_cli: Cli) -> Cli:
    """A CLI on a freshly initialised tenant."""
    new_cli.ok("init")
    return new_cli
