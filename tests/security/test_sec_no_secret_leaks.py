"""No password or secret in any tenant file, CLI output or error message, in any encoding."""

from __future__ import annotations

import base64
import binascii

from flowrt.security.tenant_security import TenantSecurity

PASSWORD = "Zq7-distinctive-P4ssw0rd-xK9"
SECRET = "Vt3-client-secret-distinctive-Lm2"
TOKEN = "Hb8-connector-token-distinctive-Qe5"
P12_PASSWORD = "Jw4-p12-export-distinctive-Rt6"


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [
        raw,
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        binascii.hexlify(raw),
        value.encode("utf-16-be"),
        value.encode("utf-16-le"),
    ]


def test_secrets_never_leave_the_store(flowrt, pki, root_ca):
    run = flowrt
    run.ok(
        "credentials",
        "add",
        "smtp-out",
        "--user",
        "me@example.com",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    run.ok(
        "credentials",
        "add",
        "o365",
        "--kind",
        "oauth2-client-credentials",
        "--token-url",
        "https://login.example.com/token",
        "--client-id",
        "cid",
        "--secret-stdin",
        input=SECRET,
    )
    run.ok(
        "credentials",
        "add",
        "conn-token",
        "--kind",
        "secure-parameter",
        "--password-stdin",
        input=TOKEN,
    )
    run.ok(
        "credentials",
        "add",
        "smtp-out",
        "--user",
        "me@example.com",
        "--password-stdin",
        "--replace",
        input=PASSWORD,
    )
    run.fails("credentials", "add", "smtp-out", "--user", "x", "--password-stdin", input=PASSWORD)
    run.ok("credentials", "list")
    run.ok("credentials", "list", "--format", "json")
    for name in ("smtp-out", "o365", "conn-token"):
        run.ok("credentials", "show", name)
        run.ok("credentials", "show", name, "--format", "json")
    run.ok("locations", "add", "plant-1", "--proxy", "connector:1080", "--credential", "smtp-out")
    run.ok("locations", "list", "--format", "json")

    leaf = pki.issue("client", issuer=root_ca)
    p12 = pki.write("client.p12", pki.p12(leaf, [root_ca], P12_PASSWORD))
    run.ok("keystore", "import-key", "client", str(p12), "--password-stdin", input=P12_PASSWORD)
    run.fails(
        "keystore",
        "import-key",
        "again",
        str(p12),
        "--password-stdin",
        input=P12_PASSWORD + "-wrong",
    )
    run.ok("keystore", "add", "root", str(pki.write("root.cer", root_ca.der())))
    run.ok("keystore", "list", "--format", "json")
    run.ok("keystore", "show", "client")
    run.ok("keystore", "export", "client", "--chain")
    run.ok("keystore", "backup")

    # Errors mention the credential, not its secret.
    (run.root / "credentials.enc").write_bytes(
        (run.root / "credentials.enc").read_bytes()[:-1] + b"\x00"
    )
    run.fails("credentials", "show", "smtp-out")

    secrets = [PASSWORD, SECRET, TOKEN, P12_PASSWORD]
    keystore_password = run.ok("keystore", "password").stdout.strip()
    assert len(keystore_password) == 32

    outputs = [r.output for r in run.results if r.stdout.strip() != keystore_password]
    files = [p for p in run.root.rglob("*") if p.is_file()]
    assert len(files) >= 7
    for secret in secrets:
        for form in _forms(secret):
            for path in files:
                assert form not in path.read_bytes(), (secret, form, path)
            for output in outputs:
                assert form.decode("latin-1") not in output, (secret, form)
    # The keystore password is not stored in the tenant either, and shown by its command only.
    for form in _forms(keystore_password):
        for path in files:
            assert form not in path.read_bytes(), path
        for output in outputs:
            assert form.decode("latin-1") not in output


def test_runtime_objects_do_not_show_secrets(flowrt):
    flowrt.ok(
        "credentials",
        "add",
        "smtp-out",
        "--user",
        "me@example.com",
        "--password-stdin",
        input=PASSWORD,
    )
    security = TenantSecurity.open(flowrt.tenant)
    login = security.user_credential("smtp-out")
    for text in (
        repr(login),
        str(login),
        repr(security),
        repr(security.credentials()),
        repr(security.keystore()),
        f"{login.password}",
    ):
        assert PASSWORD not in text
    assert login.password.reveal() == PASSWORD
