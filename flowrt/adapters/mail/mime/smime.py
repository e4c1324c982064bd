"""S/MIME for outgoing mail: ``sign`` (detached multipart/signed) and ``encrypt`` (enveloped
application/pkcs7-mime), with keys and certificates from the tenant keystore.

Both work on a MIME entity: the bytes of one part, its own headers (Content-Type,
Content-Transfer-Encoding...), a blank line and its body, with CRLF line endings, exactly as
they will be sent. Each returns a new entity that replaces it; the mail's own headers (From,
To, Subject...) stay outside, in clear. Sign first, then encrypt: the recipient decrypts, then
verifies.

Limits (those of ``cryptography``'s PKCS#7 builders): signing keys are RSA (PKCS#1 v1.5) or
EC; encryption recipients must have RSA certificates (key transport); content encryption is
AES-128-CBC or AES-256-CBC. Enveloping needs cryptography 45 or later.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from flowrt.adapters.mail.model import SmimeSpec
from flowrt.errors import KeystoreError, MessagingException
from flowrt.security.keystore import KeyPair, Keystore, TrustedCertificate
from flowrt.security.tenant_security import TenantSecurity

__all__ = ["encrypt", "open_keystore", "sign"]

_HASHES: dict[str, tuple[type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512], str]] = {
    "sha256": (hashes.SHA256, "sha-256"),
    "sha384": (hashes.SHA384, "sha-384"),
    "sha512": (hashes.SHA512, "sha-512"),
}
_CIPHERS: dict[str, type[algorithms.AES128 | algorithms.AES256]] = {
    "aes128-cbc": algorithms.AES128,
    "aes256-cbc": algorithms.AES256,
}
_LIST_HINT = "see `flowrt keystore list`"
_SIGN_HINT = "import the signing key and its chain with `flowrt keystore import-key ALIAS FILE`"
_ENCRYPT_HINT = "add the recipient's certificate with `flowrt keystore add ALIAS FILE`"


def open_keystore(source: object) -> Keystore:
    """The keystore to read: a :class:`Keystore` as given, or the current one of a
    :class:`TenantSecurity` (so that `flowrt keystore add` takes effect without a restart)."""
    if isinstance(source, Keystore):
        return source
    if isinstance(source, TenantSecurity):
        try:
            return source.keystore()
        except KeystoreError as exc:
            raise MessagingException(
                f"S/MIME: cannot open the tenant keystore: {exc}", hint=exc.hint
            ) from exc
    raise TypeError(f"expected a Keystore or a TenantSecurity, not {type(source).__name__}")


# ----------------------------------------------------------------------------- sign


def sign(entity: bytes, spec: SmimeSpec, keystore: Keystore, *, now: dt.datetime) -> bytes:
    """A multipart/signed entity: ``entity`` as it is, then a detached PKCS#7 signature by
    each alias of ``spec`` (a key pair each)."""
    hash_type, micalg = _HASHES[spec.algorithm]
    builder = pkcs7.PKCS7SignatureBuilder().set_data(entity)
    extra: dict[bytes, x509.Certificate] = {}
    for alias in spec.aliases:
        pair = _key_pair(keystore, alias, now)
        key = pair.private_key
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise MessagingException(
                f"S/MIME sign: the key of alias '{alias}' is neither RSA nor EC",
                hint="S/MIME signing supports RSA and EC keys",
            )
        builder = builder.add_signer(pair.certificate, key, hash_type())
        for cert in pair.chain[1:]:  # intermediates, so that recipients can build the path
            extra[cert.fingerprint(hashes.SHA256())] = cert
    for cert in extra.values():
        builder = builder.add_certificate(cert)
    # Binary: sign these exact bytes; they are already canonical (CRLF), nothing to convert.
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    signature = builder.sign(Encoding.DER, options)
    return _multipart_signed(entity, signature, micalg)


def _multipart_signed(entity: bytes, signature: bytes, micalg: str) -> bytes:
    boundary = _boundary(b"signed", entity)
    # The CRLF before a boundary belongs to the boundary (RFC 2046 section 5.1.1): what was
    # signed is exactly ``entity``, as a verifier cuts it out.
    return b"".join(
        [
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
            b' micalg="' + micalg.encode() + b'"; boundary="' + boundary + b'"\r\n',
            b"\r\n",
            b"This is an S/MIME signed message.\r\n",
            b"--" + boundary + b"\r\n",
            entity,
            b"\r\n--" + boundary + b"\r\n",
            b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="smime.p7s"\r\n',
            b"\r\n",
            _base64_lines(signature),
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )


def _key_pair(keystore: Keystore, alias: str, now: dt.datetime) -> KeyPair:
    entry = _entry(keystore, alias, "sign", _SIGN_HINT)
    if not isinstance(entry, KeyPair):
        raise MessagingException(
            f"S/MIME sign: the keystore entry '{alias}' is a certificate, not a key pair; "
            "signing needs the private key",
            hint=_SIGN_HINT,
        )
    _check_valid(entry.certificate, alias, "sign", now)
    return entry


# ----------------------------------------------------------------------------- encrypt


def encrypt(entity: bytes, spec: SmimeSpec, keystore: Keystore, *, now: dt.datetime) -> bytes:
    """An application/pkcs7-mime (enveloped-data) entity that only the holders of the keys
    of ``spec``'s certificates can open."""
    # pyproject allows cryptography 42; the envelope builder with a choice of AES is newer.
    envelope = getattr(pkcs7, "PKCS7EnvelopeBuilder", None)
    if not hasattr(envelope, "set_content_encryption_algorithm"):
        raise MessagingException(
            "S/MIME encrypt needs cryptography 45 or later",
            hint="upgrade the cryptography package (pip install 'cryptography>=45')",
        )
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity)
    builder = builder.set_content_encryption_algorithm(_CIPHERS[spec.algorithm])
    for alias in spec.aliases:
        builder = builder.add_recipient(_recipient(keystore, alias, now))
    enveloped = builder.encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
    return b"".join(
        [
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n"
            b' name="smime.p7m"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="smime.p7m"\r\n',
            b"\r\n",
            _base64_lines(enveloped),
        ]
    )


def _recipient(keystore: Keystore, alias: str, now: dt.datetime) -> x509.Certificate:
    """A recipient's certificate: a trusted certificate entry, or the certificate of a key
    pair (to encrypt for oneself as well)."""
    entry = _entry(keystore, alias, "encrypt", _ENCRYPT_HINT)
    cert = entry.certificate if isinstance(entry, KeyPair | TrustedCertificate) else None
    if cert is None:
        raise MessagingException(f"S/MIME encrypt: '{alias}' holds no certificate")
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise MessagingException(
            f"S/MIME encrypt: the certificate of alias '{alias}' has no RSA key; "
            "S/MIME encryption here supports RSA recipients only",
            hint="ask the recipient for an RSA certificate",
        )
    _check_valid(cert, alias, "encrypt", now)
    return cert


# ----------------------------------------------------------------------------- shared


def _entry(keystore: Keystore, alias: str, action: str, hint: str) -> object:
    if alias not in keystore:
        raise MessagingException(
            f"S/MIME {action}: no keystore entry with alias '{alias}'", hint=f"{hint}; {_LIST_HINT}"
        )
    return keystore.get(alias)


def _check_valid(cert: x509.Certificate, alias: str, action: str, now: dt.datetime) -> None:
    """Refuse a certificate outside its validity: recipients would reject the mail anyway,
    and finding out here puts the reason in the MPL instead of a recipient's inbox."""
    if now > cert.not_valid_after_utc:
        day = cert.not_valid_after_utc.date().isoformat()
        raise MessagingException(
            f"S/MIME {action}: the certificate of alias '{alias}' expired on {day}",
            hint="renew the certificate and replace it in the keystore",
        )
    if now < cert.not_valid_before_utc:
        day = cert.not_valid_before_utc.date().isoformat()
        raise MessagingException(
            f"S/MIME {action}: the certificate of alias '{alias}' is valid only from {day}",
            hint="check the system clock, or wait until the certificate is valid",
        )


def _boundary(kind: bytes, content: bytes) -> bytes:
    """A boundary derived from the content (the same input gives the same bytes), checked
    against the content it must not occur in."""
    digest = hashlib.sha256(kind + content).hexdigest()
    boundary = b"=_smime_" + digest[:32].encode()
    while boundary in content:  # practically never; a boundary must not occur in its parts
        boundary += b"_"
    return boundary


def _base64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")
