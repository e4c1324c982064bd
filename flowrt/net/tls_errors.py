"""Explain a failed TLS handshake the way operators know it, with what to do about it."""

from __future__ import annotations

import datetime as dt
import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID

from flowrt.errors import SSLHandshakeException

# OpenSSL verify codes (X509_V_ERR_*) that mean "the chain does not end in a trusted root"
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_EXPIRED = 10
_NOT_YET_VALID = 9
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64
_PKIX = "PKIX path building failed: unable to find valid certification path to requested target"


def describe_certificate(cert: x509.Certificate) -> dict[str, str]:
    """Subject, issuer, validity and names of a certificate, as strings for people."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = ", ".join(str(n.value) for n in names)
    except x509.ExtensionNotFound:
        alt = ""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "names": alt,
    }


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return name.rfc4514_string()
    value = values[0].value
    return f"CN={value.decode() if isinstance(value, bytes) else value}"


def tls_failure(
    exc: ssl.SSLError | ConnectionError,
    *,
    host: str,
    port: int,
    peer: x509.Certificate | None,
    fix_command: str,
) -> SSLHandshakeException:
    """An SSLHandshakeException for ``exc``; raise it ``from exc``.

    ``peer`` is the server's certificate fetched without validation (by the adapter, on a
    second connection), which lets the message name the issuer and the hint name the fix.
    ``fix_command`` is the connectivity test that imports the server's chain.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _UNTRUSTED or code is None:
            issuer = _cn(peer.issuer) if peer is not None else None
            where = f" (server certificate issued by {issuer})" if issuer else ""
            hint = (
                f"the tenant keystore has no certificate for {issuer}; run `{fix_command}`"
                if issuer
                else f"the tenant keystore does not trust the server's chain; run `{fix_command}`"
            )
            return SSLHandshakeException(f"{_PKIX}{where}", hint=hint)
        if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
            names = describe_certificate(peer)["names"] if peer is not None else ""
            hint = (
                f"the server's certificate is for {names}; use one of these names in the "
                "address (behind a connector, make the virtual host one of them)"
                if names
                else "use the host name that the server's certificate was issued for"
            )
            return SSLHandshakeException(
                f"No subject alternative names matching {host} found", hint=hint
            )
        if code == _EXPIRED:
            when = peer.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC") if peer else "earlier"
            return SSLHandshakeException(
                f"certificate expired on {when}",
                hint=f"the certificate of {host}:{port} expired; its operator must renew it",
            )
        if code == _NOT_YET_VALID:
            return SSLHandshakeException(
                "certificate is not yet valid",
                hint=f"check this machine's clock (now {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} "
                "UTC) or the server's certificate",
            )
        return SSLHandshakeException(exc.verify_message or str(exc))
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "WRONG_VERSION_NUMBER" in str(reason).upper():
            return SSLHandshakeException(
                "Unsupported or unrecognized SSL message",
                hint=f"{host}:{port} does not speak TLS right away; for a STARTTLS port use "
                "protection starttls-mandatory, or use the implicit TLS port",
            )
        return SSLHandshakeException(f"TLS handshake failed: {reason}")
    return SSLHandshakeException(
        "Remote host terminated the handshake",
        hint=f"{host}:{port} closed the connection during the TLS handshake; check the "
        "protection setting and the port",
    )
