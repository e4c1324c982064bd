"""TLS client contexts whose trust comes from the tenant keystore only.

:func:`client_context` trusts exactly the keystore's trusted certificate entries (no system
CAs), checks host names, requires a certificate and speaks TLS 1.2 or newer. Like a Java
truststore, any trusted entry is an anchor, an intermediate or a server's own certificate
included (OpenSSL's partial-chain flag), so adding the certificate the connectivity test
showed is enough. A key pair alias can be given as the client certificate.

Contexts are cached per keystore content and client alias: building one is cheap, but the
runtime opens many connections, and a changed keystore gives new content and a new context.
Cached contexts are shared, so callers must not change them.

``ssl`` loads a client key only from a file. flowrt writes the chain and the key, encrypted
with a one-time password, to an anonymous in-memory file (``memfd_create``) that is gone when
closed; where that does not exist, to a 0600 file in a private temporary folder, removed right
after loading.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import secrets
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from flowrt.errors import KeystoreError
from flowrt.security.certificates import to_pem
from flowrt.security.keystore import KeyPair, Keystore

_CACHE_SIZE = 32
_cache: collections.OrderedDict[tuple[str, str], ssl.SSLContext] = collections.OrderedDict()
_cache_lock = threading.Lock()


def client_context(keystore: Keystore, *, client_alias: str | None = None) -> ssl.SSLContext:
    """A verifying client context from ``keystore`` (and ``client_alias`` as client cert)."""
    cache_key = (_content_hash(keystore), (client_alias or "").lower())
    with _cache_lock:
        cached = _cache.get(cache_key)
        if cached is not None:
            _cache.move_to_end(cache_key)
            return cached
    context = _build(keystore, client_alias)
    with _cache_lock:
        _cache[cache_key] = context
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return context


def unverified_context() -> ssl.SSLContext:
    """For the connectivity test's ``--no-validate`` only: shows a chain, trusts anything.

    Never used for a deployed flow.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _content_hash(keystore: Keystore) -> str:
    # Hash what the context is made of, rather than trusting file times: two keystores with
    # the same entries share a context, and any change to an entry gives a new one.
    digest = hashlib.sha256(str(keystore.path).encode())
    for entry in keystore:
        digest.update(b"\0" + entry.kind.encode() + b"\0" + entry.alias.encode())
        for cert in entry.chain:
            digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.hexdigest()


def _build(keystore: Keystore, client_alias: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    anchors = keystore.trusted_certificates()
    if anchors:
        context.load_verify_locations(cadata=to_pem(anchors).decode("ascii"))
    if client_alias is not None:
        _load_client_certificate(context, keystore.key_pair(client_alias))
    return context


def server_context(keystore: Keystore, alias: str) -> ssl.SSLContext:
    """A TLS server context presenting the key pair ``alias`` (the monitor's HTTPS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_client_certificate(context, keystore.key_pair(alias), use="a TLS server certificate")
    return context


def _load_client_certificate(
    context: ssl.SSLContext, pair: KeyPair, *, use: str = "a TLS client certificate"
) -> None:
    one_time = secrets.token_urlsafe(32)
    key_pem = pair.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(one_time.encode("ascii")),
    )
    data = to_pem(pair.chain) + key_pem
    try:
        with _private_file(data) as path:
            context.load_cert_chain(path, password=one_time)
    except (ssl.SSLError, OSError) as exc:
        raise KeystoreError(f"the key pair '{pair.alias}' cannot be used as {use} ({exc})") from exc


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("flowrt-client-cert", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="flowrt-") as folder:  # mode 0700
        path = Path(folder) / "client.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        try:
            yield str(path)
        finally:
            path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
