"""Fixtures for the MIME tests: sample mails, receivers from flow text, a small S/MIME PKI."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flowrt.adapters.mail.mime.compose import MailComposer
from flowrt.adapters.mail.model import Receiver
from flowrt.dsl import parse_text

DATA = Path(__file__).resolve().parent.parent / "data" / "mime"
FIXED_NOW = dt.datetime(2024, 6, 3, 9, 0, tzinfo=dt.UTC)

FLOW = """flow t {
    sender mail {
        protocol   imap
        address    "imap.example.com"
        protection imaps
        auth       plain credential "in"
    }
    receiver mail out {
        address    "smtp.example.com"
        protection smtps
%s
    }
}
"""


def sample(name: str) -> bytes:
    """A sample mail from tests/data/mime."""
    return (DATA / name).read_bytes()


def receiver(settings: str) -> Receiver:
    """A receiver built by the DSL from setting lines (from and to are required)."""
    lines = "\n".join(" " * 8 + line.strip() for line in settings.strip().splitlines())
    result = parse_text(FLOW % lines, "t.flow")
    assert result.ok, result.render()
    return result.flows[0].receivers[0]


def composer(settings: str, **kwargs: Any) -> MailComposer:
    """A composer with a fixed clock and Message-ID, so that equal input gives equal bytes."""
    kwargs.setdefault("clock", lambda: FIXED_NOW)
    kwargs.setdefault("make_message_id", lambda domain: f"<fixed-id@{domain}>")
    return MailComposer(receiver(settings), **kwargs)


@pytest.fixture
def make_composer() -> Callable[..., MailComposer]:
    return composer


# ----------------------------------------------------------------------------- S/MIME PKI


@dataclasses.dataclass
class Issued:
    key: Any
    cert: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = self.key
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def issue(
    cn: str,
    *,
    issuer: Issued | None = None,
    key: str = "rsa",
    expired: bool = False,
    email: str | None = None,
) -> Issued:
    """A certificate: a CA when ``issuer`` is None, else an S/MIME end-entity certificate."""
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if key == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=400 if expired else 1)
    end = now - dt.timedelta(days=2) if expired else now + dt.timedelta(days=365)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email or f"{cn}@example.com")]),
            critical=False,
        )
    signer = issuer.key if issuer else private
    return Issued(private, builder.sign(signer, hashes.SHA256()))


@dataclasses.dataclass
class Pki:
    ca: Issued
    signer: Issued  # RSA key pair
    ec_signer: Issued  # EC key pair
    partner: Issued  # RSA, its certificate only goes into the keystore
    ec_partner: Issued
    expired: Issued


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = issue("flowrt test S/MIME CA")
    return Pki(
        ca=ca,
        signer=issue("integration", issuer=ca),
        ec_signer=issue("integration-ec", issuer=ca, key="ec"),
        partner=issue("partner", issuer=ca),
        ec_partner=issue("partner-ec", issuer=ca, key="ec"),
        expired=issue("old", issuer=ca, expired=True),
    )
