"""The keystore file opens with `openssl pkcs12` and `keytool`, and flowrt reads what they write."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from flowrt.security import _pkcs12
from flowrt.security.keystore import Keystore

needs_keytool = pytest.mark.skipif(shutil.which("keytool") is None, reason="keytool not installed")


def _password(cli) -> str:
    result = cli.ok("keystore", "password")
    assert "warning: this password opens the tenant keystore" in result.stderr
    return result.stdout.strip()


@pytest.fixture
def populated(flowrt, pki, root_ca):
    """Two trusted certificates, a key pair with a chain of 3 and a generated key pair."""
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    leaf = pki.issue("client.example", issuer=inter, key="rsa")
    other = pki.issue("Other Root", ca=True)
    flowrt.ok("keystore", "add", "example-root", str(pki.write("root.cer", root_ca.der())))
    flowrt.ok("keystore", "add", "Other.Root", str(pki.write("other.pem", other.pem())))
    p12 = pki.write("client.p12", pki.p12(leaf, [inter, root_ca], "pw"))
    flowrt.ok("keystore", "import-key", "client", str(p12), "--password-stdin", input="pw")
    flowrt.ok("keystore", "generate", "self", "--subject", "CN=self", "--key", "ec:p256")
    return flowrt


def test_password_is_stable_and_shown_only_by_its_command(populated):
    password = _password(populated)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password)
    assert _password(populated) == password
    for result in populated.results:
        if result.stdout.strip() != password:
            assert password not in result.output


def test_openssl_reads_the_keystore(populated):
    password = _password(populated)
    path = populated.root / "keystore.p12"
    env = {**os.environ, "KS_PASS": password}
    info = subprocess.run(
        ["openssl", "pkcs12", "-info", "-in", str(path), "-passin", "env:KS_PASS", "-nokeys"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    text = info.stdout + info.stderr
    assert "MAC: sha256" in text
    for alias in ("example-root", "Other.Root", "client", "self"):
        assert f"friendlyName: {alias}" in text
    # The trusted certificates carry Oracle's trusted key usage attribute.
    assert text.count("2.16.840.1.113894.746875.1.1") == 2
    keys = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-passin", "env:KS_PASS", "-nocerts", "-nodes"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert keys.stdout.count("-----BEGIN PRIVATE KEY-----") == 2
    wrong = subprocess.run(
        ["openssl", "pkcs12", "-info", "-in", str(path), "-passin", "pass:wrong", "-noout"],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode != 0


@needs_keytool
def test_keytool_lists_trusted_and_key_entries(populated):
    password = _password(populated)
    path = populated.root / "keystore.p12"
    env = {**os.environ, "KS_PASS": password}
    listing = subprocess.run(
        [
            "keytool",
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            str(path),
            "-storepass:env",
            "KS_PASS",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "Your keystore contains 4 entries" in listing
    entries = {}
    for block in listing.split("Alias name: ")[1:]:
        alias = block.splitlines()[0].strip()
        entries[alias] = block
    # keytool shows aliases in lower case; flowrt treats them case-insensitively too.
    assert set(entries) == {"example-root", "other.root", "client", "self"}
    assert "Entry type: trustedCertEntry" in entries["example-root"]
    assert "Entry type: trustedCertEntry" in entries["other.root"]
    assert "Entry type: PrivateKeyEntry" in entries["client"]
    assert "Certificate chain length: 3" in entries["client"]
    assert "Entry type: PrivateKeyEntry" in entries["self"]
    # Java can decrypt the private keys too: it signs a CSR with one.
    csr = subprocess.run(
        [
            "keytool",
            "-certreq",
            "-alias",
            "client",
            "-storetype",
            "PKCS12",
            "-keystore",
            str(path),
            "-storepass:env",
            "KS_PASS",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "BEGIN NEW CERTIFICATE REQUEST" in csr


@needs_keytool
def test_keytool_reads_an_empty_keystore(flowrt):
    env = {**os.environ, "KS_PASS": _password(flowrt)}
    listing = subprocess.run(
        [
            "keytool",
            "-list",
            "-storetype",
            "PKCS12",
            "-keystore",
            str(flowrt.root / "keystore.p12"),
            "-storepass:env",
            "KS_PASS",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "Your keystore contains 0 entries" in listing


def test_import_key_from_an_openssl_export(flowrt, pki, root_ca):
    leaf = pki.issue("openssl-made", issuer=root_ca)
    key_pem = pki.write("key.pem", leaf.key_pem())
    cert_pem = pki.write("cert.pem", leaf.pem())
    ca_pem = pki.write("ca.pem", root_ca.pem())
    target = pki.folder / "from-openssl.p12"
    subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-export",
            "-inkey",
            str(key_pem),
            "-in",
            str(cert_pem),
            "-certfile",
            str(ca_pem),
            "-name",
            "whatever",
            "-out",
            str(target),
            "-passout",
            "pass:exp0rt",
        ],
        check=True,
        capture_output=True,
    )
    flowrt.ok(
        "keystore", "import-key", "imported", str(target), "--password-stdin", input="exp0rt\n"
    )
    pair = Keystore.open(flowrt.tenant).key_pair("imported")
    assert pair.chain == (leaf.cert, root_ca.cert)


def test_the_file_also_loads_in_cryptography(populated):
    # cryptography's own loader sees the first key, and every certificate.
    data = (populated.root / "keystore.p12").read_bytes()
    loaded = pkcs12.load_pkcs12(data, _password(populated).encode())
    assert loaded.key is not None
    names = {c.friendly_name for c in loaded.additional_certs if c.friendly_name}
    assert {b"example-root", b"Other.Root"} <= names


def test_mac_key_derivation_matches_cryptography(root_ca):
    from cryptography.hazmat.primitives import serialization

    data = pkcs12.serialize_java_truststore(
        [pkcs12.PKCS12Certificate(root_ca.cert, b"r")],
        serialization.BestAvailableEncryption("päss wörd".encode()),
    )
    content = _pkcs12.parse(data, "päss wörd")
    assert content.trusted == [("r", root_ca.cert)]
    with pytest.raises(_pkcs12.Pkcs12PasswordError):
        _pkcs12.parse(data, "pass word")


def _keytool(*args: str) -> None:
    done = subprocess.run(["keytool", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_keytool
def test_restore_reads_what_keytool_wrote(flowrt, pki, root_ca):
    """keytool puts every key in one bag list and every certificate in another: the keys are
    paired with their certificates by localKeyId, chains and trusted entries kept apart."""
    password = _password(flowrt)
    store = str(pki.folder / "keytool.p12")
    common = ["-storetype", "PKCS12", "-keystore", store, "-storepass", password]
    # a key pair with a chain of 3, as a CA issued it, brought in with -importkeystore
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    leaf = pki.issue("client.example", issuer=inter, key="rsa")
    source = pki.write("client.p12", pki.p12(leaf, [inter, root_ca], "pw-source"))
    _keytool(
        "-importkeystore",
        "-noprompt",
        "-srckeystore",
        str(source),
        "-srcstoretype",
        "PKCS12",
        "-srcstorepass",
        "pw-source",
        "-destkeystore",
        store,
        "-deststoretype",
        "PKCS12",
        "-deststorepass",
        password,
    )
    _keytool(
        "-genkeypair", "-alias", "ec-pair", "-keyalg", "EC", "-groupname", "secp256r1",
        "-dname", "CN=ec.example", "-validity", "30", *common,
    )  # fmt: skip
    _keytool(
        "-genkeypair", "-alias", "rsa-pair", "-keyalg", "RSA", "-keysize", "2048",
        "-dname", "CN=rsa.example", "-validity", "30", *common,
    )  # fmt: skip
    root_file = pki.write("root.cer", root_ca.der())
    _keytool("-importcert", "-noprompt", "-alias", "the-root", "-file", str(root_file), *common)

    restored = flowrt.ok("keystore", "restore", store)

    assert "(4 entries)" in restored.output
    rows = {
        r["alias"]: r for r in json.loads(flowrt.ok("keystore", "list", "--format", "json").stdout)
    }
    assert {a: r["type"] for a, r in rows.items()} == {
        "exported": "key pair",
        "ec-pair": "key pair",
        "rsa-pair": "key pair",
        "the-root": "certificate",
    }
    assert rows["ec-pair"]["subject"] == "CN=ec.example"
    assert rows["rsa-pair"]["subject"] == "CN=rsa.example"
    shown = json.loads(flowrt.ok("keystore", "show", "exported", "--format", "json").stdout)
    assert [c["subject"] for c in shown["chain"]] == [
        "CN=client.example",
        "CN=Intermediate",
        "CN=Test Root CA",
    ]
    # each private key is the one of its own certificate
    keystore = Keystore.open(flowrt.tenant)
    for alias in ("exported", "ec-pair", "rsa-pair"):
        pair = keystore.key_pair(alias)
        assert pair.private_key.public_key() == pair.certificate.public_key()
    # and the next change writes flowrt's layout, which keytool still lists
    flowrt.ok("keystore", "delete", "rsa-pair")
    assert "ec-pair" in _keytool_list(password, flowrt.root / "keystore.p12")


def _keytool_list(password: str, path) -> str:
    done = subprocess.run(
        [
            "keytool",
            "-list",
            "-storetype",
            "PKCS12",
            "-keystore",
            str(path),
            "-storepass",
            password,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_keytool
def test_restore_of_a_keytool_file_with_another_password_says_which_one(flowrt, pki):
    store = str(pki.folder / "other-password.p12")
    _keytool(
        "-genkeypair", "-alias", "p", "-keyalg", "EC", "-groupname", "secp256r1",
        "-dname", "CN=p", "-storetype", "PKCS12", "-keystore", store, "-storepass", "not-it-123",
    )  # fmt: skip
    before = flowrt.snapshot()
    result = flowrt.fails("keystore", "restore", store)
    assert "cannot be opened with the password derived from this master key" in result.output
    assert "must use the password `flowrt keystore password` prints" in result.output
    assert flowrt.snapshot() == before
