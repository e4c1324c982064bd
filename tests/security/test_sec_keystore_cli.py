"""`flowrt keystore ...`: every command, and every bad input leaving the keystore untouched."""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from flowrt.security.keystore import KeyPair, Keystore, edit_keystore


def _keystore(cli) -> Keystore:
    return Keystore.open(cli.tenant)


def _aliases(cli) -> list[str]:
    return [e.alias for e in _keystore(cli)]


# ----------------------------------------------------------------------------- add


def test_add_der_certificate(flowrt, pki, root_ca):
    path = pki.write("root.cer", root_ca.der())
    result = flowrt.ok("keystore", "add", "example-root", str(path))
    assert "added certificate example-root: CN=Test Root CA" in result.output
    entry = _keystore(flowrt).get("example-root")
    assert entry.kind == "certificate"
    assert entry.certificate == root_ca.cert


def test_add_pem_chain_becomes_numbered_aliases(flowrt, pki, root_ca):
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    path = pki.write("chain.pem", inter.pem() + b"\n" + root_ca.pem())
    flowrt.ok("keystore", "add", "mail", str(path))
    store = _keystore(flowrt)
    assert [e.alias for e in store] == ["mail", "mail_1"]
    assert store.get("mail").certificate == inter.cert
    assert store.get("mail_1").certificate == root_ca.cert


@pytest.mark.parametrize("pem", [False, True], ids=["p7b-der", "p7b-pem"])
def test_add_pkcs7_bundle(flowrt, pki, root_ca, pem):
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    path = pki.write("bundle.p7b", pki.p7b([inter, root_ca], pem=pem))
    flowrt.ok("keystore", "add", "bundle", str(path))
    certs = {e.certificate for e in _keystore(flowrt)}
    assert certs == {inter.cert, root_ca.cert}
    assert _aliases(flowrt) == ["bundle", "bundle_1"]


def test_add_pem_with_text_around_blocks(flowrt, pki, root_ca):
    text = b"Subject: Test Root CA\nsome explanation\n" + root_ca.pem() + b"trailing notes\n"
    flowrt.ok("keystore", "add", "root", str(pki.write("root.crt", text)))
    assert _aliases(flowrt) == ["root"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"hello, I am not a certificate\n", "is not a certificate"),
        (b"\x30\x82\x01\x00garbage", "is not a certificate"),
        ("truncated-der", "is not a certificate"),
        ("truncated-pem", "has no matching END line"),
        ("corrupt-pem", "PEM block 1 (CERTIFICATE) is not a valid certificate"),
        ("private-key", "contains a private key"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "holds no certificate"),
    ],
)
def test_bad_certificate_files_change_nothing(flowrt, pki, root_ca, content, message):
    if content == "truncated-der":
        content = root_ca.der()[: len(root_ca.der()) // 2]
    elif content == "truncated-pem":
        content = root_ca.pem()[:200]
    elif content == "corrupt-pem":
        lines = root_ca.pem().splitlines(keepends=True)
        lines[3] = b"A" * (len(lines[3]) - 1) + b"\n"
        content = b"".join(lines)
    elif content == "private-key":
        content = root_ca.key_pem() + root_ca.pem()
    flowrt.ok("keystore", "add", "existing", str(pki.write("ok.cer", root_ca.der())))
    path = pki.write("bad.cer", content)
    before = flowrt.snapshot()
    result = flowrt.fails("keystore", "add", "new", str(path))
    assert str(path) in result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert flowrt.snapshot() == before


def test_missing_file(flowrt, pki):
    result = flowrt.fails("keystore", "add", "x", str(pki.folder / "nope.cer"))
    assert "nope.cer: no such file" in result.output


def test_duplicate_alias_needs_replace(flowrt, pki, root_ca):
    other = pki.issue("Other Root", ca=True)
    flowrt.ok("keystore", "add", "root", str(pki.write("a.cer", root_ca.der())))
    before = flowrt.snapshot()
    for alias in ("root", "ROOT"):  # aliases differing in case are the same alias (as keytool)
        result = flowrt.fails("keystore", "add", alias, str(pki.write("b.cer", other.der())))
        assert "the alias 'root' is already in the keystore" in result.output
        assert "hint: use --replace" in result.output
    assert flowrt.snapshot() == before
    flowrt.ok("keystore", "add", "root", str(pki.folder / "b.cer"), "--replace")
    assert _keystore(flowrt).get("root").certificate == other.cert


def test_chain_clash_on_a_numbered_alias(flowrt, pki, root_ca):
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    flowrt.ok("keystore", "add", "mail_1", str(pki.write("a.cer", root_ca.der())))
    before = flowrt.snapshot()
    chain = pki.write("chain.pem", inter.pem() + root_ca.pem())
    result = flowrt.fails("keystore", "add", "mail", str(chain))
    assert "'mail_1' is already in the keystore" in result.output
    assert flowrt.snapshot() == before


def test_alias_rules(flowrt, pki, root_ca):
    path = pki.write("root.cer", root_ca.der())
    flowrt.ok("keystore", "add", "a" * 250, str(path))
    before = flowrt.snapshot()
    result = flowrt.fails("keystore", "add", "b" * 251, str(path))
    assert "an alias has 1 to 250 characters" in result.output and "has 251" in result.output
    for bad in (
        "with space",
        "new\nline",
        "tab\there",
        ".leading",
        "_under",
        "semi;colon",
        "ümlaut",
        "",
    ):
        result = flowrt.fails("keystore", "add", bad, str(path))
        assert "alias" in result.output
    assert flowrt.snapshot() == before
    for good in ("Mail.Root-2024", "x", "smtp@example.com", "a+b_c"):
        flowrt.ok("keystore", "add", good, str(path))


def test_chain_aliases_must_fit_the_length_limit(flowrt, pki, root_ca):
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    chain = pki.write("chain.pem", inter.pem() + root_ca.pem())
    result = flowrt.fails("keystore", "add", "c" * 249, str(chain))
    assert "has 251" in result.output
    assert _aliases(flowrt) == []


# ----------------------------------------------------------------------------- system_ entries


@pytest.fixture
def with_system_entry(flowrt, root_ca):
    with edit_keystore(flowrt.tenant) as store:
        store.add_certificates("system_root", [root_ca.cert], allow_system=True)
    return flowrt


def test_system_entries_are_read_only(with_system_entry, pki, root_ca):
    cli = with_system_entry
    path = pki.write("root.cer", root_ca.der())
    before = cli.snapshot()
    checks = [
        ("keystore", "delete", "system_root"),
        ("keystore", "delete", "SYSTEM_ROOT"),
        ("keystore", "rename", "system_root", "mine"),
        ("keystore", "add", "system_root", str(path), "--replace"),
        ("keystore", "add", "system_new", str(path)),
        ("keystore", "generate", "system_key", "--subject", "CN=x", "--key", "ec:p256"),
    ]
    for args in checks:
        result = cli.fails(*args)
        assert "is a system entry (system_*) and is read-only" in result.output, args
    assert cli.snapshot() == before
    cli.ok("keystore", "add", "mine", str(path))
    result = cli.fails("keystore", "rename", "mine", "system_mine")
    assert "read-only" in result.output
    rows = json.loads(cli.ok("keystore", "list", "--format", "json").output)
    owners = {r["alias"]: r["owner"] for r in rows}
    assert owners == {"system_root": "system", "mine": "tenant"}
    cli.ok("keystore", "delete", "mine")
    assert [e.alias for e in Keystore.open(cli.tenant)] == ["system_root"]


# ----------------------------------------------------------------------------- import-key


def test_import_key_from_p12(flowrt, pki, root_ca):
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    leaf = pki.issue("client.example", issuer=inter, key="rsa")
    path = pki.write("client.p12", pki.p12(leaf, [root_ca, inter], "p12-pass"))
    result = flowrt.ok(
        "keystore", "import-key", "client", str(path), "--password-stdin", input="p12-pass\n"
    )
    assert "imported key pair client: CN=client.example (RSA 2048, chain of 3" in result.output
    entry = _keystore(flowrt).key_pair("client")
    assert entry.chain == (leaf.cert, inter.cert, root_ca.cert)  # put in chain order
    assert entry.private_key.private_numbers() == leaf.key.private_numbers()


def test_import_key_with_empty_password(flowrt, pki):
    leaf = pki.issue("nopass")
    path = pki.write("nopass.p12", pki.p12(leaf, [], ""))
    flowrt.ok("keystore", "import-key", "nopass", str(path), "--password-stdin", input="")
    assert isinstance(_keystore(flowrt).get("nopass"), KeyPair)


def test_import_key_bad_inputs(flowrt, pki, root_ca):
    leaf = pki.issue("client")
    good = pki.write("client.p12", pki.p12(leaf, [], "right"))
    before = flowrt.snapshot()
    result = flowrt.fails(
        "keystore", "import-key", "k", str(good), "--password-stdin", input="wrong\n"
    )
    assert f"cannot open {good}: wrong password" in result.output
    not_p12 = pki.write("cert.p12", root_ca.der())
    result = flowrt.fails(
        "keystore", "import-key", "k", str(not_p12), "--password-stdin", input="x\n"
    )
    assert f"{not_p12} is not a PKCS#12 (.p12/.pfx) file" in result.output
    truncated = pki.write("cut.p12", good.read_bytes()[:300])
    result = flowrt.fails(
        "keystore", "import-key", "k", str(truncated), "--password-stdin", input="right\n"
    )
    assert f"cannot open {truncated}: wrong password, or the file is truncated" in result.output
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    certs_only = pki.write(
        "certs.p12",
        pkcs12.serialize_key_and_certificates(
            None, None, None, [root_ca.cert], serialization.BestAvailableEncryption(b"pw")
        ),
    )
    result = flowrt.fails(
        "keystore", "import-key", "k", str(certs_only), "--password-stdin", input="pw\n"
    )
    assert "holds no private key" in result.output
    # No password at all, and stdin is not a terminal: a usage error, not a hang.
    result = flowrt.fails("keystore", "import-key", "k", str(good), code=2)
    assert "--password-stdin" in result.output
    assert flowrt.snapshot() == before


# ----------------------------------------------------------------------------- generate / csr


@pytest.mark.parametrize(
    ("spec", "kind", "size"),
    [
        ("ec:p256", ec.EllipticCurvePrivateKey, 256),
        ("ec:p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa:2048", rsa.RSAPrivateKey, 2048),
        ("rsa:3072", rsa.RSAPrivateKey, 3072),
    ],
)
def test_generate(flowrt, spec, kind, size):
    result = flowrt.ok(
        "keystore",
        "generate",
        "client",
        "--subject",
        "CN=flowrt client,O=Example,C=DE",
        "--key",
        spec,
        "--days",
        "90",
    )
    assert "generated key pair client: CN=flowrt client,O=Example,C=DE" in result.output
    pair = _keystore(flowrt).key_pair("client")
    assert isinstance(pair.private_key, kind)
    assert pair.private_key.key_size == size
    cert = pair.certificate
    assert cert.subject == cert.issuer
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=90) <= lifetime <= datetime.timedelta(days=90, minutes=10)
    cert.verify_directly_issued_by(cert)


def test_generate_refusals(flowrt):
    flowrt.ok("keystore", "generate", "k", "--subject", "CN=a", "--key", "ec:p256")
    before = flowrt.snapshot()
    result = flowrt.fails("keystore", "generate", "k", "--subject", "CN=b", "--key", "ec:p256")
    assert "already in the keystore" in result.output
    result = flowrt.fails("keystore", "generate", "k2", "--subject", "not a dn")
    assert "is not a distinguished name" in result.output
    flowrt.fails("keystore", "generate", "k2", "--subject", "CN=a", "--key", "dsa:1024", code=2)
    flowrt.fails("keystore", "generate", "k2", "--subject", "CN=a", "--days", "0", code=2)
    assert flowrt.snapshot() == before
    flowrt.ok("keystore", "generate", "k", "--subject", "CN=b", "--key", "ec:p256", "--replace")
    assert _keystore(flowrt).get("k").certificate.subject.rfc4514_string() == "CN=b"


def test_csr(flowrt, pki):
    flowrt.ok("keystore", "generate", "k", "--subject", "CN=req,O=Example", "--key", "ec:p256")
    out = flowrt.ok("keystore", "csr", "k").stdout
    assert out.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    csr = x509.load_pem_x509_csr(out.encode())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=req,O=Example"
    pair = _keystore(flowrt).key_pair("k")
    assert csr.public_key() == pair.private_key.public_key()
    target = pki.folder / "k.csr"
    result = flowrt.ok("keystore", "csr", "k", "--out", str(target))
    assert str(target) in result.output
    assert x509.load_pem_x509_csr(target.read_bytes()).subject == csr.subject


def test_csr_refusals(flowrt, pki, root_ca):
    flowrt.ok("keystore", "add", "root", str(pki.write("r.cer", root_ca.der())))
    result = flowrt.fails("keystore", "csr", "root")
    assert "is a certificate, not a key pair" in result.output
    result = flowrt.fails("keystore", "csr", "ghost")
    assert "no keystore entry with alias 'ghost'" in result.output


# ----------------------------------------------------------------------------- list / show


def test_list_marks_expired_and_expiring(flowrt, pki):
    fresh = pki.issue("Fresh", ca=True, days=400)
    soon = pki.issue("Soon", ca=True, days=10)
    old = pki.issue("Old", ca=True, expired=True)
    for name, issued in (("fresh", fresh), ("soon", soon), ("old", old)):
        flowrt.ok("keystore", "add", name, str(pki.write(f"{name}.cer", issued.der())))
    flowrt.ok("keystore", "generate", "mykey", "--subject", "CN=me", "--key", "ec:p256")
    text = flowrt.ok("keystore", "list").output
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert text.splitlines()[0].split()[:5] == ["ALIAS", "TYPE", "OWNER", "VALID", "UNTIL"]
    assert "EXPIRED" in lines["old"]
    assert "expires in 9d" in lines["soon"] or "expires in 10d" in lines["soon"]
    assert "EXPIRED" not in lines["fresh"] and "expires" not in lines["fresh"]
    assert "key pair" in lines["mykey"] and "CN=me" in lines["mykey"]
    rows = {
        r["alias"]: r for r in json.loads(flowrt.ok("keystore", "list", "--format", "json").stdout)
    }
    assert rows["old"]["expired"] is True and rows["old"]["expires_within_30_days"] is False
    assert rows["soon"]["expired"] is False and rows["soon"]["expires_within_30_days"] is True
    assert rows["fresh"]["expired"] is False and rows["fresh"]["expires_within_30_days"] is False
    assert rows["mykey"]["type"] == "key pair" and rows["mykey"]["owner"] == "tenant"
    assert rows["fresh"]["subject"] == "CN=Fresh" and rows["fresh"]["issuer"] == "CN=Fresh"


def test_show(flowrt, pki, root_ca):
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    leaf = pki.issue("client", issuer=inter, key="rsa")
    path = pki.write("c.p12", pki.p12(leaf, [inter, root_ca], "pw"))
    flowrt.ok("keystore", "import-key", "client", str(path), "--password-stdin", input="pw")
    text = flowrt.ok("keystore", "show", "client").output
    assert f"serial:              {leaf.cert.serial_number:X}" in text
    assert "key:                 RSA 2048" in text
    assert "signature algorithm: ecdsa-with-SHA256" in text
    sha256 = (
        leaf.cert.fingerprint(
            __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()
        )
        .hex(":")
        .upper()
    )
    assert sha256 in text
    assert "SHA-1:" in text
    assert "chain (3):" in text and "[2] CN=Test Root CA" in text
    data = json.loads(flowrt.ok("keystore", "show", "client", "--format", "json").stdout)
    assert data["certificate"]["sha256"] == sha256
    assert [c["subject"] for c in data["chain"]] == [
        "CN=client",
        "CN=Intermediate",
        "CN=Test Root CA",
    ]
    assert data["certificate"]["key"] == "RSA 2048"
    assert "PRIVATE" not in text and "PRIVATE" not in json.dumps(data)


def test_show_unknown_alias(flowrt):
    result = flowrt.fails("keystore", "show", "ghost")
    assert "error: no keystore entry with alias 'ghost'" in result.output
    assert "hint: see `flowrt keystore list`" in result.output


# ----------------------------------------------------------------------------- rename / delete


def test_rename_and_delete(flowrt, pki, root_ca):
    path = pki.write("r.cer", root_ca.der())
    flowrt.ok("keystore", "add", "old", str(path))
    flowrt.ok("keystore", "add", "taken", str(path))
    assert "renamed old to new" in flowrt.ok("keystore", "rename", "old", "new").output
    assert _aliases(flowrt) == ["new", "taken"]
    before = flowrt.snapshot()
    assert "already in use" in flowrt.fails("keystore", "rename", "new", "taken").output
    assert (
        "no keystore entry with alias 'old'"
        in flowrt.fails("keystore", "rename", "old", "x").output
    )
    assert (
        "characters an alias cannot have"
        in flowrt.fails("keystore", "rename", "new", "bad name").output
    )
    assert "no keystore entry" in flowrt.fails("keystore", "delete", "ghost").output
    assert flowrt.snapshot() == before
    flowrt.ok("keystore", "rename", "new", "NEW")  # a change of case only
    assert "deleted certificate NEW" in flowrt.ok("keystore", "delete", "new").output
    assert _aliases(flowrt) == ["taken"]


# ----------------------------------------------------------------------------- export


def test_export_certificate_and_chain_never_the_key(flowrt, pki, root_ca):
    inter = pki.issue("Intermediate", issuer=root_ca, ca=True)
    leaf = pki.issue("client", issuer=inter)
    path = pki.write("c.p12", pki.p12(leaf, [inter, root_ca], "pw"))
    flowrt.ok("keystore", "import-key", "client", str(path), "--password-stdin", input="pw")
    single = flowrt.ok("keystore", "export", "client").stdout.encode()
    assert x509.load_pem_x509_certificates(single) == [leaf.cert]
    chain = flowrt.ok("keystore", "export", "client", "--chain").stdout.encode()
    assert x509.load_pem_x509_certificates(chain) == [leaf.cert, inter.cert, root_ca.cert]
    target = pki.folder / "out.pem"
    flowrt.ok("keystore", "export", "client", "--chain", "--out", str(target))
    assert x509.load_pem_x509_certificates(target.read_bytes())[0] == leaf.cert
    for data in (single, chain, target.read_bytes()):
        assert b"PRIVATE KEY" not in data
    flowrt.fails("keystore", "export", "client", "--key", code=2)
    assert "no keystore entry" in flowrt.fails("keystore", "export", "ghost").output


# ----------------------------------------------------------------------------- check


def test_check_within(flowrt, pki):
    flowrt.ok("keystore", "add", "fresh", str(pki.write("f.cer", pki.issue("F", days=400).der())))
    result = flowrt.ok("keystore", "check", "--within", "30d")
    assert "no entry expires within 30d" in result.output
    flowrt.ok("keystore", "add", "soon", str(pki.write("s.cer", pki.issue("S", days=20).der())))
    flowrt.ok("keystore", "check", "--within", "12h")
    flowrt.ok("keystore", "check", "--within", "2w")
    result = flowrt.fails("keystore", "check", "--within", "3w")
    assert "soon" in result.stdout and "fresh" not in result.stdout
    assert "1 entry expired or expiring within 3w" in result.stderr
    result = flowrt.fails("keystore", "check")  # default 30d
    assert "soon" in result.stdout
    rows = json.loads(flowrt.fails("keystore", "check", "--format", "json").stdout)
    assert [r["alias"] for r in rows] == ["soon"]
    flowrt.ok("keystore", "add", "old", str(pki.write("o.cer", pki.issue("O", expired=True).der())))
    result = flowrt.fails("keystore", "check", "--within", "1h")
    assert "old" in result.stdout and "EXPIRED" in result.stdout
    for bad in ("30", "d", "30x", "-1d"):
        flowrt.fails("keystore", "check", "--within", bad, code=2)


def test_check_looks_at_the_whole_chain(flowrt, pki, root_ca):
    inter = pki.issue("Short Intermediate", issuer=root_ca, ca=True, days=5)
    leaf = pki.issue("client", issuer=inter, days=300)
    path = pki.write("c.p12", pki.p12(leaf, [inter, root_ca], "pw"))
    flowrt.ok("keystore", "import-key", "client", str(path), "--password-stdin", input="pw")
    result = flowrt.fails("keystore", "check", "--within", "1w")
    assert "client" in result.stdout


# ----------------------------------------------------------------------------- backup / restore


def test_backup_and_restore(flowrt, pki, root_ca):
    flowrt.ok("keystore", "add", "root", str(pki.write("r.cer", root_ca.der())))
    result = flowrt.ok("keystore", "backup")
    backups = list((flowrt.root / "backups").glob("keystore-*.p12"))
    assert len(backups) == 1 and str(backups[0]) in result.output
    assert backups[0].read_bytes() == (flowrt.root / "keystore.p12").read_bytes()
    explicit = pki.folder / "my-backup.p12"
    flowrt.ok("keystore", "backup", "--out", str(explicit))
    assert explicit.read_bytes() == backups[0].read_bytes()
    flowrt.ok("keystore", "backup")  # same second: a second, distinct file
    assert len(list((flowrt.root / "backups").glob("keystore-*.p12"))) == 2

    flowrt.ok("keystore", "delete", "root")
    assert _aliases(flowrt) == []
    result = flowrt.ok("keystore", "restore", str(explicit))
    assert "restored the keystore" in result.output and "(1 entries)" in result.output
    assert "the keystore it replaced is backed up in" in result.output
    assert _aliases(flowrt) == ["root"]
    assert len(list((flowrt.root / "backups").glob("keystore-*.p12"))) == 3


def test_restore_refuses_bad_files(flowrt, pki, root_ca, make_cli):
    flowrt.ok("keystore", "add", "root", str(pki.write("r.cer", root_ca.der())))
    before = flowrt.snapshot()
    good = flowrt.root / "keystore.p12"
    truncated = pki.write("cut.p12", good.read_bytes()[:-40])
    result = flowrt.fails("keystore", "restore", str(truncated))
    assert f"{truncated} is not a keystore flowrt can read" in result.output
    result = flowrt.fails("keystore", "restore", str(pki.write("cert.p12", root_ca.der())))
    assert "is not a keystore flowrt can read" in result.output
    # A keystore of another tenant opens with another password.
    other = make_cli("other")
    other.ok("init")
    other.ok("keystore", "add", "root", str(pki.folder / "r.cer"))
    result = flowrt.fails("keystore", "restore", str(other.root / "keystore.p12"))
    assert "cannot be opened with the password derived from this master key" in result.output
    assert "nope" in flowrt.fails("keystore", "restore", str(pki.folder / "nope")).output
    assert flowrt.snapshot() == before


# ----------------------------------------------------------------------------- damaged keystore


def test_tampered_keystore_is_a_clear_error(flowrt, pki, root_ca):
    flowrt.ok("keystore", "add", "root", str(pki.write("r.cer", root_ca.der())))
    path = flowrt.root / "keystore.p12"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = flowrt.fails("keystore", "list")
    assert (
        f"the keystore {path} cannot be opened with the password derived from this master key"
        in result.output
    )
    assert "flowrt keystore restore" in result.output
    path.write_bytes(bytes(data[:100]))
    assert "is not a keystore flowrt can read" in flowrt.fails("keystore", "list").output
    path.unlink()
    assert f"the keystore {path} does not exist" in flowrt.fails("keystore", "list").output


def test_concurrent_changes_are_not_lost(flowrt, pki):
    import threading

    from flowrt.security.masterkey import load_master_key

    key = load_master_key(flowrt.tenant)
    certs = [pki.issue(f"Root {i}", ca=True).cert for i in range(6)]
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            with edit_keystore(flowrt.tenant, key) as store:
                store.add_certificates(f"root-{i}", [certs[i]])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert _aliases(flowrt) == [f"root-{i}" for i in range(6)]


def test_backup_takes_the_file_as_restore_does(flowrt, pki, root_ca):
    flowrt.ok("keystore", "add", "root", str(pki.write("r.cer", root_ca.der())))
    copy = pki.folder / "positional.p12"
    result = flowrt.ok("keystore", "backup", str(copy))
    assert f"keystore backed up to {copy}" in result.output
    assert copy.read_bytes() == (flowrt.root / "keystore.p12").read_bytes()
    twice = flowrt.fails("keystore", "backup", str(copy), "--out", str(pki.folder / "b"), code=2)
    assert "FILE or --out FILE" in twice.output
    flowrt.ok("keystore", "delete", "root")
    flowrt.ok("keystore", "restore", str(copy))
    assert _aliases(flowrt) == ["root"]


def test_generate_takes_e_and_alternative_names(flowrt):
    made = flowrt.ok(
        "keystore",
        "generate",
        "smime",
        "--subject",
        "CN=Jo Doe,e=jo@example.com,O=Example",
        "--san",
        "email:jo@example.com",
        "--san",
        "dns:mail.example.com",
        "--key",
        "ec:p256",
    )
    assert "generated key pair smime: CN=Jo Doe,E=jo@example.com,O=Example" in made.output
    shown = json.loads(flowrt.ok("keystore", "show", "smime", "--format", "json").output)
    assert shown["certificate"]["alternative_names"] == "email:jo@example.com, dns:mail.example.com"
    cert = Keystore.open(flowrt.tenant).get("smime").certificate
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in usages


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "CN=x,FOO=y"], "has an attribute type 'FOO' that is not known"),
        (["--subject", "garbage"], "is not a distinguished name (malformed)"),
        (["--subject", "CN=x", "--san", "uri:x"], "the type is dns, email or ip, not 'uri'"),
        (["--subject", "CN=x", "--san", "email:nobody"], "'nobody' is not an e-mail address"),
    ],
)
def test_generate_names_what_is_wrong_in_subject_and_san(flowrt, args, message):
    before = flowrt.snapshot()
    result = flowrt.fails("keystore", "generate", "x", *args)
    assert message in result.output and "Traceback" not in result.output
    assert flowrt.snapshot() == before
