"""The tenant keystore's PKCS#12 container: many trusted certificates and many key pairs.

cryptography can write a Java truststore (certificates carrying Oracle's "trusted key usage"
attribute, OID 2.16.840.1.113894.746875.1.1, without which keytool ignores certificate-only
entries) and it can write one key pair with its chain, but not both in one file, and it reads
back only the first key of a file. So flowrt lets cryptography build and encrypt every piece
and only splices the pieces' ContentInfos into one AuthenticatedSafe, with a fresh MAC (RFC 7292,
appendix B key derivation + HMAC). The file flowrt writes is::

    AuthenticatedSafe:
        encryptedData   all trusted certificates (friendlyName + trusted key usage)   [if any]
        encryptedData   key pair 1: its certificate (friendlyName, localKeyId) + chain
        data            key pair 1: the shrouded private key (friendlyName, localKeyId)
        ...             one such pair of ContentInfos per key pair

Reading splits the AuthenticatedSafe along the same lines and hands each group, wrapped as a
PKCS#12 of its own, to ``cryptography``'s loader. The same layout is what ``openssl pkcs12
-export`` writes for one key pair, so such files read too.

keytool writes another layout: one ``data`` ContentInfo with every key bag, then one
``encryptedData`` with every certificate (key pairs' certificates, their chains and trusted
certificates together). Such a file is read key bag by key bag: each key bag alone, with all
the certificate content beside it, goes to the loader, which pairs the key with the
certificate of the same localKeyId; the named certificates that are no key pair's own are
the trusted ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from flowrt.security import _der

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_DATA = _der.encode_oid("1.2.840.113549.1.7.1")
_ENCRYPTED_DATA = _der.encode_oid("1.2.840.113549.1.7.6")
_KEY_BAG = _der.encode_oid("1.2.840.113549.1.12.10.1.1")
_SHROUDED_KEY_BAG = _der.encode_oid("1.2.840.113549.1.12.10.1.2")
_FRIENDLY_NAME = _der.encode_oid("1.2.840.113549.1.9.20")

# MAC digest OIDs (DigestInfo.digestAlgorithm) -> hashlib names; SHA-256 is what flowrt writes.
_MAC_DIGESTS = {
    _der.encode_oid("1.3.14.3.2.26"): "sha1",
    _der.encode_oid("2.16.840.1.101.3.4.2.1"): "sha256",
    _der.encode_oid("2.16.840.1.101.3.4.2.2"): "sha384",
    _der.encode_oid("2.16.840.1.101.3.4.2.3"): "sha512",
}
_SHA256 = _der.encode_oid("2.16.840.1.101.3.4.2.1")
_MAC_ITERATIONS = 2048  # as cryptography, OpenSSL and keytool write it
_MAC_KEY_ID = 3  # RFC 7292 B.3: ID 3 derives the MAC key


class Pkcs12FormatError(ValueError):
    """Not a PKCS#12 file, or not in a layout flowrt can read."""


class Pkcs12PasswordError(ValueError):
    """The MAC does not verify: a wrong password, or the file was modified."""


@dataclasses.dataclass(frozen=True)
class RawKeyPair:
    alias: str
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # end-entity first


@dataclasses.dataclass(frozen=True)
class RawContent:
    trusted: list[tuple[str, x509.Certificate]]
    key_pairs: list[RawKeyPair]


# ----------------------------------------------------------------------------- writing


def build(
    trusted: Sequence[tuple[str, x509.Certificate]],
    key_pairs: Sequence[RawKeyPair],
    password: str,
) -> bytes:
    """A PKCS#12 file holding ``trusted`` certificates and ``key_pairs``, all under ``password``."""
    encryption = serialization.BestAvailableEncryption(password.encode("utf-8"))
    infos: list[bytes] = []
    if trusted:
        store = pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(cert, alias.encode("utf-8")) for alias, cert in trusted],
            encryption,
        )
        infos.extend(_content_infos(store))
    for pair in key_pairs:
        piece = pkcs12.serialize_key_and_certificates(
            pair.alias.encode("utf-8"), pair.key, pair.chain[0], list(pair.chain[1:]), encryption
        )
        infos.extend(_content_infos(piece))
    return _wrap(infos, password, _MAC_ITERATIONS)


def _content_infos(pfx: bytes) -> list[bytes]:
    """The ContentInfos of a PFX that cryptography just wrote, as raw DER."""
    auth_safe, _mac = _split_pfx(pfx)
    return [info.raw for info in _der.children(_der.read_single(auth_safe, _der.SEQUENCE).value)]


def _wrap(content_infos: Sequence[bytes], password: str, iterations: int) -> bytes:
    auth_safe = _der.encode(_der.SEQUENCE, b"".join(content_infos))
    salt = os.urandom(16)
    mac = hmac.digest(_mac_key(password, salt, iterations, "sha256"), auth_safe, "sha256")
    algorithm = _der.encode(_der.SEQUENCE, _SHA256 + _der.encode(_der.NULL, b""))
    mac_data = _der.encode(
        _der.SEQUENCE,
        _der.encode(_der.SEQUENCE, algorithm + _der.encode(_der.OCTET_STRING, mac))
        + _der.encode(_der.OCTET_STRING, salt)
        # DER leaves out a DEFAULT value, and the iteration count defaults to 1.
        + (_der.encode_int(iterations) if iterations != 1 else b""),
    )
    content_info = _der.encode(
        _der.SEQUENCE,
        _DATA + _der.encode(_der.CONTEXT_0, _der.encode(_der.OCTET_STRING, auth_safe)),
    )
    return _der.encode(_der.SEQUENCE, _der.encode_int(3) + content_info + mac_data)


# ----------------------------------------------------------------------------- reading


def parse(data: bytes, password: str) -> RawContent:
    """Everything in a PKCS#12 file flowrt wrote (or one in the same layout)."""
    auth_safe, mac_data = _split_pfx(data)
    _verify_mac(auth_safe, mac_data, password)
    try:
        infos = _der.children(_der.read_single(auth_safe, _der.SEQUENCE).value)
        kinds = [_kind_of(info) for info in infos]
    except _der.DerError as exc:
        raise Pkcs12FormatError(f"malformed PKCS#12 content ({exc})") from exc

    if not _flowrt_layout(infos, kinds):
        return _parse_by_local_key_id(infos, kinds, password)
    content = RawContent(trusted=[], key_pairs=[])
    i = 0
    while i < len(infos):
        if kinds[i] == "certs" and i + 1 < len(infos) and kinds[i + 1] == "key":
            content.key_pairs.append(_load_key_pair([infos[i].raw, infos[i + 1].raw], password))
            i += 2
        elif kinds[i] == "certs":
            content.trusted.extend(_load_certificates(infos[i].raw, password))
            i += 1
        else:
            raise Pkcs12FormatError(
                "the PKCS#12 layout is not one flowrt writes (a private key without its "
                "certificates before it)"
            )
    return content


def _flowrt_layout(infos: list[_der.Tlv], kinds: list[str]) -> bool:
    """Certificates, each key (one per ContentInfo) right after its certificates."""
    for i, kind in enumerate(kinds):
        if kind == "other":
            return False
        if kind == "key" and (i == 0 or kinds[i - 1] != "certs" or len(_key_bags(infos[i])) != 1):
            return False
    return True


def _parse_by_local_key_id(infos: list[_der.Tlv], kinds: list[str], password: str) -> RawContent:
    """Any layout (keytool's): keys and certificates paired by localKeyId by the loader."""
    try:
        bags = [
            bag
            for info, kind in zip(infos, kinds, strict=True)
            if kind == "key"
            for bag in _bags(info)
        ]
    except _der.DerError as exc:
        raise Pkcs12FormatError(f"malformed PKCS#12 content ({exc})") from exc
    key_bags = [bag for bag in bags if _first(bag).raw in (_KEY_BAG, _SHROUDED_KEY_BAG)]
    # certificates that sit beside the keys, and every other ContentInfo, are certificate content
    cert_infos = [info.raw for info, kind in zip(infos, kinds, strict=True) if kind != "key"]
    loose = [bag.raw for bag in bags if _first(bag).raw not in (_KEY_BAG, _SHROUDED_KEY_BAG)]
    if loose:
        cert_infos.append(_data_info(loose))
    named: list[tuple[str, x509.Certificate]] = []
    if cert_infos:
        loaded = _load_group(cert_infos, password)
        found = [*([loaded.cert] if loaded.cert else []), *loaded.additional_certs]
        named = [
            (item.friendly_name.decode("utf-8", "replace"), item.certificate)
            for item in found
            if item.friendly_name
        ]
    every_cert = [cert for _, cert in named]
    pairs: list[RawKeyPair] = []
    for bag in key_bags:
        loaded = _load_group([*cert_infos, _data_info([bag.raw])], password)
        key = loaded.key
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise Pkcs12FormatError("a key pair entry holds a key that is neither RSA nor EC")
        if loaded.cert is None:
            raise Pkcs12FormatError(
                "a private key in the PKCS#12 file has no certificate with its localKeyId"
            )
        leaf = loaded.cert.certificate
        name = loaded.cert.friendly_name or _bag_friendly_name(bag)
        if not name:
            raise Pkcs12FormatError("a private key in the PKCS#12 file has no alias")
        others = [c.certificate for c in loaded.additional_certs] + every_cert
        chain = _issuer_chain(leaf, others)
        alias = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        pairs.append(RawKeyPair(alias, key, chain))
    own = {(p.alias, p.chain[0]) for p in pairs}
    in_chains = {cert for p in pairs for cert in p.chain[1:]}
    trusted = [
        (name, cert)
        for name, cert in named
        if (name, cert) not in own and not (cert in in_chains and _named_by_dn(name, cert))
    ]
    return RawContent(trusted=trusted, key_pairs=pairs)


def _named_by_dn(name: str, cert: x509.Certificate) -> bool:
    """keytool names a key pair's chain certificates by their subject DN (and marks only
    trusted entries as trusted, which cryptography's loader does not show): such a name is
    a chain member, not an alias someone chose."""

    def canonical(text: str) -> str:
        return ",".join(part.strip() for part in text.split(",")).lower()

    return canonical(name) == canonical(cert.subject.rfc4514_string())


def _issuer_chain(
    leaf: x509.Certificate, pool: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """``leaf`` and its issuers as far as ``pool`` has them (nothing unrelated)."""
    chain = [leaf]
    while chain[-1].issuer != chain[-1].subject:
        issuer = next((c for c in pool if c.subject == chain[-1].issuer and c not in chain), None)
        if issuer is None:
            break
        chain.append(issuer)
    return tuple(chain)


def _bags(info: _der.Tlv) -> list[_der.Tlv]:
    """The SafeBags of a plain ``data`` ContentInfo."""
    fields = _der.children(_der.expect(info, _der.SEQUENCE).value)
    octets = _der.read_single(_der.expect(fields[1], _der.CONTEXT_0).value, _der.OCTET_STRING)
    return _der.children(_der.read_single(octets.value, _der.SEQUENCE).value)


def _key_bags(info: _der.Tlv) -> list[_der.Tlv]:
    return [bag for bag in _bags(info) if _first(bag).raw in (_KEY_BAG, _SHROUDED_KEY_BAG)]


def _data_info(bags: Sequence[bytes]) -> bytes:
    safe_contents = _der.encode(_der.SEQUENCE, b"".join(bags))
    return _der.encode(
        _der.SEQUENCE,
        _DATA + _der.encode(_der.CONTEXT_0, _der.encode(_der.OCTET_STRING, safe_contents)),
    )


def _bag_friendly_name(bag: _der.Tlv) -> str | None:
    """The friendlyName attribute of a SafeBag (a BMPString), if it has one."""
    fields = _der.children(bag.value)
    if len(fields) < 3 or fields[2].tag != _der.SET:
        return None
    for attribute in _der.children(fields[2].value):
        parts = _der.children(attribute.value)
        if len(parts) == 2 and parts[0].raw == _FRIENDLY_NAME:
            values = _der.children(parts[1].value)
            if values:
                return values[0].value.decode("utf-16-be", "replace")
    return None


def is_pfx(data: bytes) -> bool:
    """Whether ``data`` starts like a PKCS#12 file: a SEQUENCE opening with INTEGER 3.

    Only the first bytes are looked at, and BER's indefinite length is accepted, so that a
    truncated file or one written by an older tool is still told apart from, say, a
    certificate (which says nothing of the password).
    """
    if len(data) < 5 or data[0] != _der.SEQUENCE:
        return False
    first = data[1]
    start = 2 if first <= 0x80 else 2 + (first & 0x7F)
    return data[start : start + 3] == b"\x02\x01\x03"


def _split_pfx(data: bytes) -> tuple[bytes, _der.Tlv]:
    """The AuthenticatedSafe bytes (what the MAC covers) and the MacData."""
    try:
        pfx = _der.children(_der.read_single(data, _der.SEQUENCE).value)
        if len(pfx) != 3 or _der.decode_int(pfx[0]) != 3:
            raise _der.DerError("not a version 3 PFX with a MAC")
        info = _der.children(_der.expect(pfx[1], _der.SEQUENCE).value)
        if len(info) != 2 or info[0].raw != _DATA:
            raise _der.DerError("the PFX content is not of type data")
        octets = _der.read_single(_der.expect(info[1], _der.CONTEXT_0).value, _der.OCTET_STRING)
        return octets.value, _der.expect(pfx[2], _der.SEQUENCE)
    except _der.DerError as exc:
        raise Pkcs12FormatError(f"not a PKCS#12 file ({exc})") from exc


def _verify_mac(auth_safe: bytes, mac_data: _der.Tlv, password: str) -> None:
    try:
        fields = _der.children(mac_data.value)
        digest_info = _der.children(_der.expect(fields[0], _der.SEQUENCE).value)
        algorithm = _der.children(_der.expect(digest_info[0], _der.SEQUENCE).value)
        expected = _der.expect(digest_info[1], _der.OCTET_STRING).value
        salt = _der.expect(fields[1], _der.OCTET_STRING).value
        iterations = _der.decode_int(fields[2]) if len(fields) > 2 else 1
    except (_der.DerError, IndexError) as exc:
        raise Pkcs12FormatError(f"malformed PKCS#12 MAC ({exc})") from exc
    name = _MAC_DIGESTS.get(algorithm[0].raw) if algorithm else None
    if name is None:
        raise Pkcs12FormatError("the PKCS#12 MAC uses a digest flowrt does not support")
    if not 1 <= iterations <= 10_000_000:
        raise Pkcs12FormatError(f"implausible PKCS#12 MAC iteration count {iterations}")
    actual = hmac.digest(_mac_key(password, salt, iterations, name), auth_safe, name)
    if not hmac.compare_digest(actual, expected):
        raise Pkcs12PasswordError("the PKCS#12 MAC does not verify")


def _kind_of(info: _der.Tlv) -> str:
    """``certs`` for encrypted (certificate) content, ``key`` for plain content with a key bag."""
    fields = _der.children(_der.expect(info, _der.SEQUENCE).value)
    if not fields:
        raise _der.DerError("empty ContentInfo")
    if fields[0].raw == _ENCRYPTED_DATA:
        return "certs"
    if fields[0].raw == _DATA and len(fields) == 2:
        octets = _der.read_single(_der.expect(fields[1], _der.CONTEXT_0).value, _der.OCTET_STRING)
        bags = _der.children(_der.read_single(octets.value, _der.SEQUENCE).value)
        bag_types = {_first(bag).raw for bag in bags}
        return "key" if bag_types & {_KEY_BAG, _SHROUDED_KEY_BAG} else "other"
    return "other"


def _first(tlv: _der.Tlv) -> _der.Tlv:
    inner = _der.children(tlv.value)
    if not inner:
        raise _der.DerError("empty SafeBag")
    return inner[0]


def _load_group(content_infos: list[bytes], password: str) -> pkcs12.PKCS12KeyAndCertificates:
    # The group is wrapped as a PKCS#12 of its own; its MAC only has to satisfy the loader
    # in memory, so one iteration is enough (the real file's MAC was checked above).
    piece = _wrap(content_infos, password, 1)
    try:
        return pkcs12.load_pkcs12(piece, password.encode("utf-8"))
    except ValueError as exc:
        raise Pkcs12FormatError(
            f"an entry of the PKCS#12 file cannot be decrypted ({exc})"
        ) from exc


def _load_certificates(content_info: bytes, password: str) -> list[tuple[str, x509.Certificate]]:
    loaded = _load_group([content_info], password)
    found = [*([loaded.cert] if loaded.cert else []), *loaded.additional_certs]
    # A certificate without a friendly name cannot be addressed by alias (keytool skips it too).
    return [
        (item.friendly_name.decode("utf-8", "replace"), item.certificate)
        for item in found
        if item.friendly_name
    ]


def _load_key_pair(content_infos: list[bytes], password: str) -> RawKeyPair:
    loaded = _load_group(content_infos, password)
    key = loaded.key
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise Pkcs12FormatError("a key pair entry holds a key that is neither RSA nor EC")
    if loaded.cert is None or not loaded.cert.friendly_name:
        raise Pkcs12FormatError("a private key in the PKCS#12 file has no named certificate")
    leaf = loaded.cert.certificate
    chain = order_chain(leaf, [c.certificate for c in loaded.additional_certs])
    return RawKeyPair(loaded.cert.friendly_name.decode("utf-8", "replace"), key, chain)


def order_chain(
    leaf: x509.Certificate, others: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """``leaf`` followed by its issuers as far as ``others`` go, then any left over."""
    chain = [leaf]
    pool = [c for c in others if c != leaf]
    while pool:
        current = chain[-1]
        if current.issuer == current.subject:
            break
        issuer = next((c for c in pool if c.subject == current.issuer), None)
        if issuer is None:
            break
        chain.append(issuer)
        pool.remove(issuer)
    return (*chain, *pool)


# ----------------------------------------------------------------------------- RFC 7292 B.2


def _mac_key(password: str, salt: bytes, iterations: int, digest: str) -> bytes:
    """The PKCS#12 key derivation (RFC 7292, appendix B.2) with ID 3, for the MAC key."""
    h = hashlib.new(digest)
    u, v = h.digest_size, h.block_size
    # The password is a BMPString with a two-byte NUL terminator.
    secret = password.encode("utf-16-be") + b"\x00\x00"

    def fill(block: bytes) -> bytes:
        if not block:
            return b""
        size = v * ((len(block) + v - 1) // v)
        return (block * (size // len(block) + 1))[:size]

    d = bytes([_MAC_KEY_ID]) * v
    i = bytearray(fill(salt) + fill(secret))
    out = b""
    while len(out) < u:
        a = hashlib.new(digest, d + bytes(i)).digest()
        for _ in range(iterations - 1):
            a = hashlib.new(digest, a).digest()
        out += a
        b = int.from_bytes(fill(a)[:v], "big")
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j : j + v], "big") + b + 1) % (1 << (8 * v))
            i[j : j + v] = block.to_bytes(v, "big")
    return out[:u]
