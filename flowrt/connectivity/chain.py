"""The server's certificate chain: read it, say whether the keystore trusts it, save it,
import it."""

from __future__ import annotations

import dataclasses
import io
import re
import ssl
import zipfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from flowrt.security import Keystore, TrustedCertificate


@dataclasses.dataclass(frozen=True)
class CertInfo:
    cert: x509.Certificate
    trust: str  # "trusted (alias X)", "issued by trusted X", or "not trusted"

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.cert.subject.rfc4514_string(),
            "issuer": self.cert.issuer.rfc4514_string(),
            "not_before": self.cert.not_valid_before_utc.isoformat(),
            "not_after": self.cert.not_valid_after_utc.isoformat(),
            "sha256": fingerprint(self.cert),
            "trust": self.trust,
        }

    def lines(self, index: int) -> list[str]:
        c = self.cert
        return [
            f"[{index}] {c.subject.rfc4514_string()}",
            f"    issuer {c.issuer.rfc4514_string()}",
            f"    valid {c.not_valid_before_utc:%Y-%m-%d} to {c.not_valid_after_utc:%Y-%m-%d}, "
            f"{self.trust}",
        ]


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[x509.Certificate]:
    """The chain the server sent, leaf first. Python 3.11 exposes it only on the private
    ``_sslobj`` (public from 3.13); without it, the leaf alone."""
    if ssl_object is None:
        return []
    inner = getattr(ssl_object, "_sslobj", None)
    getter = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        inner, "get_unverified_chain", None
    )
    if getter is not None:
        try:
            return [x509.load_der_x509_certificate(_der(c)) for c in getter() or []]
        except (ValueError, ssl.SSLError):
            pass
    der = ssl_object.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def _der(cert: Any) -> bytes:
    if isinstance(cert, bytes):
        return cert
    return bytes(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]


def mark_trust(chain: list[x509.Certificate], keystore: Keystore) -> list[CertInfo]:
    anchors = [e for e in keystore if isinstance(e, TrustedCertificate)]
    result = []
    for cert in chain:
        trust = "not trusted by the keystore"
        for entry in anchors:
            if entry.certificate == cert:
                trust = f"trusted (keystore alias {entry.alias})"
                break
            if entry.certificate.subject == cert.issuer and _signed_by(cert, entry.certificate):
                trust = f"issued by a trusted certificate (keystore alias {entry.alias})"
        result.append(CertInfo(cert, trust))
    return result


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, Exception):
        return False
    return True


def chain_zip(chain: list[x509.Certificate]) -> bytes:
    """The chain as DER ``.cer`` files in a zip, named by position and common name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, cert in enumerate(chain):
            name = f"{index}-{_slug(cert) or 'certificate'}.cer"
            archive.writestr(name, cert.public_bytes(serialization.Encoding.DER))
    return buffer.getvalue()


def _slug(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    text = str(values[0].value) if values else ""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-").lower()


def to_import(chain: list[x509.Certificate]) -> list[x509.Certificate]:
    """The root and intermediates of a chain (top first); a lone self-signed leaf itself."""
    if len(chain) <= 1:
        return list(chain)
    return list(reversed(chain[1:]))


def default_alias(cert: x509.Certificate) -> str:
    return _slug(cert)[:200] or "server-root"
