"""Certificates in and out: reading certificate files, describing certificates, making keys.

Files are recognised by content, not by extension: PEM (one or more ``CERTIFICATE`` blocks, or
a ``PKCS7`` block), DER X.509 (``.cer``/``.crt``) or DER PKCS#7 (``.p7b``). Anything that is
not one of those is a KeystoreError naming the file and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flowrt.errors import KeystoreError
from flowrt.security import _der, _pkcs12
from flowrt.security._pkcs12 import PrivateKey

KEY_SPECS = ("rsa:3072", "rsa:2048", "ec:p256", "ec:p384")
DEFAULT_KEY_SPEC = "rsa:3072"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
_CERT_BLOCKS = {b"CERTIFICATE", b"X509 CERTIFICATE"}
_PKCS7_BLOCKS = {b"PKCS7", b"CERTIFICATE CHAIN"}


# ----------------------------------------------------------------------------- reading files


def read_certificate_file(path: Path) -> list[x509.Certificate]:
    """Every certificate in ``path``, in file order (at least one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(f"{path}: no such file") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read {path}: {exc.strerror}") from exc
    certs, found = _load(data, str(path))
    claimed = _CLAIMS.get(path.suffix.lower())
    if claimed is not None and found not in claimed[1]:
        raise KeystoreError(
            f"{path} is named {path.suffix} ({claimed[0]}) but holds {_FOUND[found]}",
            hint="rename the file to what it holds, or export it again in the claimed format",
        )
    return certs


# what a file's extension claims: (its name, the formats that fulfil it)
_CLAIMS = {
    ".p7b": ("a PKCS#7 bundle", {"pkcs7-der", "pem-pkcs7"}),
    ".p7c": ("a PKCS#7 bundle", {"pkcs7-der", "pem-pkcs7"}),
    ".pem": ("PEM text", {"pem", "pem-pkcs7"}),
    ".der": ("DER", {"x509-der", "pkcs7-der"}),
}
_FOUND = {
    "x509-der": "one DER X.509 certificate",
    "pkcs7-der": "a DER PKCS#7 bundle",
    "pem": "PEM certificates",
    "pem-pkcs7": "a PEM PKCS#7 bundle",
}
MAX_TEXT_OUTSIDE_PEM = 64 * 1024  # explanatory text (openssl's "subject=" lines) is small


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """Parse DER or PEM certificates or a PKCS#7 bundle; ``source`` names the input in errors."""
    return _load(data, source)[0]


def _load(data: bytes, source: str) -> tuple[list[x509.Certificate], str]:
    """The certificates and the format found (a key of _FOUND)."""
    if not data.strip():
        raise KeystoreError(f"{source} is empty")
    if b"-----BEGIN" in data:
        certs = _load_pem(data, source)
        return certs, "pem-pkcs7" if b"-----BEGIN PKCS7" in data else "pem"
    try:  # the first DER structure; what follows it must be nothing (or a final newline)
        end = _der.read_one(data)[1]
    except _der.DerError:  # BER or a length form we do not read: the parsers decide
        end = len(data)
    head, tail = data[:end], data[end:]
    try:
        cert = x509.load_der_x509_certificate(head)
    except ValueError:
        pass
    else:
        _no_trailing_bytes(tail, end, source, "the DER certificate")
        return [cert], "x509-der"
    try:
        certs = pkcs7.load_der_pkcs7_certificates(head)
    except ValueError:
        certs = []
    if certs:
        _no_trailing_bytes(tail, end, source, "the PKCS#7 bundle")
        return list(certs), "pkcs7-der"
    raise KeystoreError(
        f"{source} is not a certificate: neither DER X.509, PEM nor a PKCS#7 (.p7b) bundle, "
        "or it is truncated or corrupt",
        hint="a certificate file is a .cer/.crt/.pem/.p7b; for a key pair in a .p12 use "
        "`flowrt keystore import-key`",
    )


def _no_trailing_bytes(tail: bytes, end: int, source: str, what: str) -> None:
    if len(tail) <= 2 and not tail.strip():  # a final newline some tools add
        return
    raise KeystoreError(
        f"{source} is not exactly a certificate file: {len(tail)} bytes follow {what} "
        f"(from byte {end}: {_describe_bytes(tail)})",
        hint="a certificate file holds the certificate and nothing else; export it again",
    )


def _describe_bytes(chunk: bytes) -> str:
    if not chunk.strip(b"\x00\r\n\t "):
        return "zero bytes (padding)"
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data"
    return "text" if text.isprintable() or not text.strip("\r\n\t ") else "binary data"


def _outside_pem(data: bytes, source: str) -> None:
    """Text around PEM blocks is fine (openssl writes "subject=" lines); binary data or
    megabytes of it mean the file is something else, or was padded or concatenated."""
    outside = _PEM_BLOCK.sub(b"", data)
    if len(outside) > MAX_TEXT_OUTSIDE_PEM:
        raise KeystoreError(
            f"{source} is not exactly a certificate file: {len(outside)} bytes outside its PEM "
            f"blocks ({_describe_bytes(outside)}; at most {MAX_TEXT_OUTSIDE_PEM} bytes of text "
            "are taken)",
            hint="a certificate file holds the certificates and nothing else; export it again",
        )
    try:
        text = outside.decode("utf-8")
    except UnicodeDecodeError as exc:
        text, bad = "", exc.start
    else:
        bad = next((i for i, c in enumerate(text) if not (c.isprintable() or c in "\r\n\t")), -1)
    if bad >= 0 or (not text and outside):
        raise KeystoreError(
            f"{source} is not exactly a certificate file: binary data outside its PEM blocks",
            hint="a certificate file holds the certificates and nothing else; export it again",
        )


def _load_pem(data: bytes, source: str) -> list[x509.Certificate]:
    blocks = _PEM_BLOCK.findall(data)
    if data.count(b"-----BEGIN") != len(blocks):
        raise KeystoreError(f"{source}: a PEM block has no matching END line (truncated file?)")
    _outside_pem(data, source)
    certs: list[x509.Certificate] = []
    for number, (label, body) in enumerate(blocks, start=1):
        if b"PRIVATE KEY" in label:
            raise KeystoreError(
                f"{source} contains a private key; `keystore add` takes certificates only",
                hint="import a key pair from a .p12 with `flowrt keystore import-key`",
            )
        if label not in _CERT_BLOCKS | _PKCS7_BLOCKS:
            continue
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
            if label in _CERT_BLOCKS:
                certs.append(x509.load_der_x509_certificate(der))
            else:
                certs.extend(pkcs7.load_der_pkcs7_certificates(der))
        except (binascii.Error, ValueError) as exc:
            raise KeystoreError(
                f"{source}: PEM block {number} ({label.decode()}) is not a valid "
                f"certificate ({exc})"
            ) from exc
    if not certs:
        raise KeystoreError(f"{source} holds no certificate (no CERTIFICATE or PKCS7 block)")
    return certs


def load_key_pair_file(
    path: Path, password: str
) -> tuple[PrivateKey, tuple[x509.Certificate, ...]]:
    """The private key and its chain (end-entity first) from a PKCS#12 file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(f"{path}: no such file") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        loaded = pkcs12.load_pkcs12(data, password.encode("utf-8"))
    except ValueError:
        if _pkcs12.is_pfx(data):
            raise KeystoreError(
                f"cannot open {path}: wrong password, or the file is truncated or modified",
                hint="give the password the .p12 was exported with on stdin",
            ) from None
        raise KeystoreError(f"{path} is not a PKCS#12 (.p12/.pfx) file") from None
    key = loaded.key
    if key is None:
        raise KeystoreError(
            f"{path} holds no private key",
            hint="add certificates with `flowrt keystore add`",
        )
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeystoreError(
            f"{path}: the private key is {describe_key(key.public_key())}; "
            "flowrt takes RSA or EC keys"
        )
    if loaded.cert is None:
        raise KeystoreError(f"{path} has a private key but not its certificate")
    others = [c.certificate for c in loaded.additional_certs]
    return key, _pkcs12.order_chain(loaded.cert.certificate, others)


# ----------------------------------------------------------------------------- describing


def fingerprint(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> str:
    return cert.fingerprint(algorithm).hex(":").upper()


def describe_key(public_key: object) -> str:
    """``RSA 3072``, ``EC secp256r1 (256)``, ``Ed25519``..."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name} ({public_key.curve.key_size})"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def signature_algorithm(cert: x509.Certificate) -> str:
    return cert.signature_algorithm_oid._name


_SHOWN_NAMES = {NameOID.EMAIL_ADDRESS: "E"}  # as OpenSSL and keytool show it


def subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string(_SHOWN_NAMES)


def issuer(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string(_SHOWN_NAMES)


def certificate_details(cert: x509.Certificate) -> dict[str, str]:
    """What `keystore show` prints for one certificate."""
    return {
        "subject": subject(cert),
        "issuer": issuer(cert),
        "serial": format(cert.serial_number, "X"),
        "key": describe_key(cert.public_key()),
        "signature_algorithm": signature_algorithm(cert),
        "valid_from": cert.not_valid_before_utc.isoformat(),
        "valid_until": cert.not_valid_after_utc.isoformat(),
        "sha1": fingerprint(cert, hashes.SHA1()),  # a fingerprint, as keytool shows it
        "sha256": fingerprint(cert, hashes.SHA256()),
        "alternative_names": ", ".join(alternative_names(cert)),
    }


def alternative_names(cert: x509.Certificate) -> list[str]:
    """``dns:host``, ``email:a@b``, ``ip:192.0.2.1``, as `keystore generate --san` takes them."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    shown: list[str] = []
    for name in names:
        if isinstance(name, x509.DNSName):
            shown.append(f"dns:{name.value}")
        elif isinstance(name, x509.RFC822Name):
            shown.append(f"email:{name.value}")
        elif isinstance(name, x509.IPAddress):
            shown.append(f"ip:{name.value}")
    return shown


# ----------------------------------------------------------------------------- making


# Names that OpenSSL, keytool and Windows use beside RFC 4514's own (CN, O, OU, C, ST, L...).
_EXTRA_ATTRIBUTES = {
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME,
    "GIVENNAME": NameOID.GIVEN_NAME,
    "T": NameOID.TITLE,
    "TITLE": NameOID.TITLE,
}
_ATTRIBUTE_TYPE = re.compile(r"(^|(?<!\\)[,+])\s*([A-Za-z][A-Za-z0-9-]*)\s*=")
_SUBJECT_HINT = 'write it like "CN=flowrt client,O=Example,C=DE" or "CN=Jo Doe,E=jo@example.com"'


def parse_subject(text: str) -> x509.Name:
    """``CN=mail client,O=Example,E=a@example.com`` (RFC 4514, plus E/EMAIL and friends) to
    a Name; at least one attribute."""
    original = text
    # Attribute types are case-insensitive (RFC 4514), cryptography wants them upper case.
    text = _ATTRIBUTE_TYPE.sub(lambda m: m.group(1) + m.group(2).upper() + "=", text)
    # cryptography raises a bare ValueError for an unknown attribute type: name it ourselves.
    for part in re.split(r"(?<!\\)[,+]", text):
        key = part.partition("=")[0].strip()
        if not key or "=" not in part:
            continue
        if key.upper() not in _KNOWN_ATTRIBUTES and not re.fullmatch(r"\d+(\.\d+)+", key):
            raise KeystoreError(
                f"the subject {original!r} has an attribute type {key!r} that is not known",
                hint="known: " + ", ".join(sorted(_KNOWN_ATTRIBUTES)) + " (or a dotted OID)",
            )
    try:
        name = x509.Name.from_rfc4514_string(text, dict(_EXTRA_ATTRIBUTES))
    except ValueError as exc:
        raise KeystoreError(
            f"the subject {original!r} is not a distinguished name ({str(exc) or 'malformed'})",
            hint=_SUBJECT_HINT,
        ) from exc
    if not list(name):
        raise KeystoreError("the subject is empty", hint='write it like "CN=flowrt client"')
    return name


_KNOWN_ATTRIBUTES = frozenset(
    {"CN", "O", "OU", "C", "ST", "L", "STREET", "DC", "UID", *_EXTRA_ATTRIBUTES}
)


def parse_san(text: str) -> x509.GeneralName:
    """``dns:mail.example.com``, ``email:a@example.com``, ``ip:192.0.2.1`` to a
    subject alternative name."""
    kind, sep, value = text.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if not sep or not value:
        raise KeystoreError(
            f"--san {text!r}: write TYPE:VALUE", hint="dns:mail.example.com, email:a@example.com"
        )
    if kind == "dns":
        if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
            raise KeystoreError(f"--san {text!r}: {value!r} is not a host name")
        return x509.DNSName(value)
    if kind == "email":
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
            raise KeystoreError(f"--san {text!r}: {value!r} is not an e-mail address")
        return x509.RFC822Name(value)
    if kind == "ip":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise KeystoreError(f"--san {text!r}: {value!r} is not an IP address") from None
    raise KeystoreError(f"--san {text!r}: the type is dns, email or ip, not {kind!r}")


def generate_key(spec: str) -> PrivateKey:
    if spec == "rsa:3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if spec == "rsa:2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if spec == "ec:p256":
        return ec.generate_private_key(ec.SECP256R1())
    if spec == "ec:p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise KeystoreError(f"unknown key type {spec!r}; choose one of {', '.join(KEY_SPECS)}")


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def self_signed(
    subject_name: x509.Name,
    key: PrivateKey,
    *,
    days: int,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """A self-signed end-entity certificate for TLS client (and server) authentication, and
    for S/MIME (e-mail protection) when it names an e-mail address."""
    if not 1 <= days <= 36500:
        raise KeystoreError(f"--days must be between 1 and 36500, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    mail = subject_name.get_attributes_for_oid(NameOID.EMAIL_ADDRESS) or any(
        isinstance(n, x509.RFC822Name) for n in sans
    )
    if mail:
        usages.append(ExtendedKeyUsageOID.EMAIL_PROTECTION)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(subject_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little slack for clocks that are behind.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(key, _hash_for(key))


def csr_for(key: PrivateKey, cert: x509.Certificate) -> x509.CertificateSigningRequest:
    """A CSR with the certificate's subject, signed by its key."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(cert.subject)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(san.value, critical=san.critical)
    except x509.ExtensionNotFound:
        pass
    return builder.sign(key, _hash_for(key))


def to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
