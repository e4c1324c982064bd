"""TLS client contexts from the keystore, against a real TLS server on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from flowrt.errors import KeystoreError
from flowrt.security import tls
from flowrt.security.keystore import Keystore, edit_keystore


class TlsServer:
    """Accepts connections, completes the handshake, says ``ok``; remembers server errors."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # so that close() is noticed: accept() is not woken by it
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self.peer_certs: list[dict] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    with self.context.wrap_socket(conn, server_side=True) as tls_conn:
                        self.peer_certs.append(tls_conn.getpeercert())
                        tls_conn.sendall(b"ok\n")
                        with contextlib.suppress(OSError):
                            tls_conn.recv(1)
                except (ssl.SSLError, OSError) as exc:
                    self.errors.append(exc)

    def connect(self, context: ssl.SSLContext, hostname: str = "localhost") -> bytes:
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=hostname) as conn,
        ):
            return conn.recv(3)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def chain(pki, root_ca):
    inter = pki.issue("Mail Intermediate", issuer=root_ca, ca=True)
    server = pki.issue("localhost", issuer=inter, dns=["localhost", "127.0.0.1"])
    return root_ca, inter, server


def _server_context(pki, server, inter, *, client_ca=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_file = pki.write("server-chain.pem", server.pem() + inter.pem())
    key_file = pki.write("server-key.pem", server.key_pem())
    context.load_cert_chain(cert_file, key_file)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.pem().decode())
    return context


@pytest.fixture
def server(pki, chain):
    _root, inter, leaf = chain
    srv = TlsServer(_server_context(pki, leaf, inter))
    yield srv
    srv.close()


def _store(flowrt) -> Keystore:
    return Keystore.open(flowrt.tenant)


def _trust(flowrt, *issued, alias="trusted"):
    with edit_keystore(flowrt.tenant) as store:
        store.add_certificates(alias, [i.cert for i in issued], replace=True)


def test_trusted_root_verifies(flowrt, server, chain):
    _trust(flowrt, chain[0])
    context = tls.client_context(_store(flowrt))
    assert server.connect(context) == b"ok\n"
    assert server.connect(context, "127.0.0.1") == b"ok\n"


def test_empty_keystore_trusts_nothing(flowrt, server):
    context = tls.client_context(_store(flowrt))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        server.connect(context)


def test_no_system_cas_and_strict_settings(flowrt, chain):
    _trust(flowrt, chain[0])
    context = tls.client_context(_store(flowrt))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    # Exactly the keystore's certificate, nothing from the system store.
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "Test Root CA"),),)]


def test_hostname_is_checked(flowrt, server, chain):
    _trust(flowrt, chain[0])
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        server.connect(tls.client_context(_store(flowrt)), "mail.example.com")


def test_intermediate_alone_is_an_anchor(flowrt, server, chain):
    _trust(flowrt, chain[1])
    assert server.connect(tls.client_context(_store(flowrt))) == b"ok\n"


def test_key_pair_certificates_are_not_anchors(flowrt, pki, server, chain):
    root = chain[0]
    p12 = pki.write("c.p12", pki.p12(pki.issue("client", issuer=root), [root], "pw"))
    flowrt.ok("keystore", "import-key", "client", str(p12), "--password-stdin", input="pw")
    with pytest.raises(ssl.SSLCertVerificationError):
        server.connect(tls.client_context(_store(flowrt)))


def test_client_certificate(flowrt, pki, chain):
    root, inter, leaf = chain
    client_ca = pki.issue("Client CA", ca=True)
    client = pki.issue("flowrt client", issuer=client_ca, key="rsa")
    srv = TlsServer(_server_context(pki, leaf, inter, client_ca=client_ca))
    try:
        _trust(flowrt, root)
        p12 = pki.write("client.p12", pki.p12(client, [client_ca], "pw"))
        flowrt.ok("keystore", "import-key", "client", str(p12), "--password-stdin", input="pw")
        context = tls.client_context(_store(flowrt), client_alias="client")
        assert srv.connect(context) == b"ok\n"
        assert srv.peer_certs[-1]["subject"] == ((("commonName", "flowrt client"),),)
        # Without the client certificate the server refuses (seen by the client on read).
        with pytest.raises((ssl.SSLError, ConnectionError)):
            srv.connect(tls.client_context(_store(flowrt)))
    finally:
        srv.close()


def test_client_certificate_without_memfd(flowrt, pki, chain, monkeypatch, tmp_path):
    root, inter, leaf = chain
    client_ca = pki.issue("Client CA", ca=True)
    client = pki.issue("fallback client", issuer=client_ca)
    p12 = pki.write("client.p12", pki.p12(client, [client_ca], "pw"))
    flowrt.ok("keystore", "import-key", "client", str(p12), "--password-stdin", input="pw")
    _trust(flowrt, root)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    monkeypatch.delattr(os, "memfd_create")
    srv = TlsServer(_server_context(pki, leaf, inter, client_ca=client_ca))
    try:
        assert srv.connect(tls.client_context(_store(flowrt), client_alias="client")) == b"ok\n"
    finally:
        srv.close()
    assert list(temp.iterdir()) == []  # the private file and its folder are gone


def test_client_alias_errors(flowrt, chain):
    _trust(flowrt, chain[0])
    with pytest.raises(KeystoreError, match="no keystore entry with alias 'ghost'"):
        tls.client_context(_store(flowrt), client_alias="ghost")
    with pytest.raises(KeystoreError, match="is a certificate, not a key pair"):
        tls.client_context(_store(flowrt), client_alias="trusted")


def test_contexts_are_cached_until_the_keystore_changes(flowrt, pki, chain):
    _trust(flowrt, chain[0])
    first = tls.client_context(_store(flowrt))
    assert tls.client_context(_store(flowrt)) is first  # reloaded, same content
    flowrt.ok("keystore", "generate", "me", "--subject", "CN=me", "--key", "ec:p256")
    with_client = tls.client_context(_store(flowrt), client_alias="me")
    assert with_client is not first
    assert tls.client_context(_store(flowrt), client_alias="ME") is with_client
    second = tls.client_context(_store(flowrt))
    assert second is not first  # the keystore changed
    flowrt.ok("keystore", "add", "other", str(pki.write("o.cer", pki.issue("O", ca=True).der())))
    assert tls.client_context(_store(flowrt)) is not second


def test_unverified_context_shows_any_chain(flowrt, server):
    context = tls.unverified_context()
    assert context.verify_mode == ssl.CERT_NONE and context.check_hostname is False
    assert server.connect(context, "whatever.example") == b"ok\n"


def test_private_file_helper_leaves_nothing(tmp_path, monkeypatch):
    with tls._private_file(b"data") as path:
        assert Path(path).read_bytes() == b"data"
        assert path.startswith("/proc/self/fd/")
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with tls._private_file(b"data") as path:
        assert (os.stat(path).st_mode & 0o777) == 0o600
        assert (os.stat(Path(path).parent).st_mode & 0o777) == 0o700
    assert list(tmp_path.iterdir()) == []
