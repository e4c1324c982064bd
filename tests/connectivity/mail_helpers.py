"""Helpers shared by the IMAP and POP3 connectivity tests: a mail, reading a text report's
stages, and looking for a leaked password."""

from __future__ import annotations

import base64
from pathlib import Path

MAIL = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: %s\r\n\r\nbody\r\n"

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
