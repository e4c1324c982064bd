"""Helpers shared by the IMAP and POP3 connectivity tests: logins, trust, stage names, and a
Dovecot whose certificate is for another name (hostname mismatch)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.connectivity.conftest import Run
from tests.servers import DovecotServer, ServerStartError, ServerUnavailable, TestCA

STAGE_NAMES = (
    "connect",
    "greeting",
    "capabilities",
    "tls",
    "certificate",
    "auth",
    "folders",
    "mailbox",
    "logout",
)


def add_login(flowrt: Run, name: str, user: str, password: str) -> None:
    result = flowrt("credentials", "add", name, "--user", user, "--password-stdin", input=password)
    assert result.exit_code == 0, result.output


def trust(flowrt: Run, test_ca: TestCA, tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(test_ca.cert_pem)
    result = flowrt("keystore", "add", "test-root", str(root))
    assert result.exit_code == 0, result.output


def stages(output: str) -> list[str]:
    """The stage names in a text report, in order."""
    names = []
    for line in output.splitlines():
        words = line.split()
        if line.startswith("  ") and not line.startswith("   ") and words[:1]:
            names += [w for w in words[:1] if w in STAGE_NAMES]
    return names


def failed_stage(output: str) -> str:
    for line in output.splitlines():
        words = line.split()
        if line.startswith("  ") and len(words) > 1 and words[1] == "FAILED":
            return words[0]
    return ""


def secret_forms(password: str, user: str) -> list[bytes]:
    """The password as it could leak: itself, base64, and the SASL PLAIN blob in base64."""
    raw = password.encode()
    plain = b"\0" + user.encode() + b"\0" + raw
    return [raw, base64.b64encode(raw), base64.b64encode(plain)]


def assert_no_secret(tenant: Path, outputs: list[str], needles: list[bytes]) -> None:
    files = [p for p in tenant.rglob("*") if p.is_file()]
    assert files, "the tenant should hold files"
    for path in files:
        data = path.read_bytes()
        assert not any(n in data for n in needles), path
    for output in outputs:
        assert not any(n.decode() in output for n in needles), output


@pytest.fixture(scope="session")
def wrong_name_dovecot(test_intermediate_ca: TestCA) -> Iterator[DovecotServer]:
    """A Dovecot (with TLS) whose certificate names only wrong.example, on 127.0.0.1."""
    cert = test_intermediate_ca.issue_server_cert(["wrong.example"])
    try:
        server = DovecotServer(cert=cert).start()
    except (ServerUnavailable, ServerStartError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.close()
