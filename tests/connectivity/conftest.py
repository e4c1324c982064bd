"""A tenant and a CLI runner for connectivity tests, the tenant's logins and trust, and a
Dovecot whose certificate is for another name (hostname mismatch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from tests.servers import DovecotServer, MailboxUser, ServerStartError, ServerUnavailable, TestCA

Run = Callable[..., Result]


@pytest.fixture
def tenant(tmp_path: Path) -> Path:
    root = tmp_path / "tenant"
    result = CliRunner().invoke(cli, ["--tenant", str(root), "init"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def flowrt(tenant: Path) -> Run:
    """``flowrt("test", "smtp", ...)`` against the test tenant; stdin via ``input=``."""

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)

    return run


def add_login(flowrt: Run, name: str, user: str, password: str) -> None:
    result = flowrt("credentials", "add", name, "--user", user, "--password-stdin", input=password)
    assert result.exit_code == 0, result.output


def trust(flowrt: Run, test_ca: TestCA, tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(test_ca.cert_pem)
    result = flowrt("keystore", "add", "test-root", str(root))
    assert result.exit_code == 0, result.output


@pytest.fixture
def trusted(flowrt: Run, test_ca: TestCA, tmp_path: Path) -> None:
    """The test root CA in the tenant keystore (alias test-root)."""
    trust(flowrt, test_ca, tmp_path)


@pytest.fixture
def box(flowrt: Run, mailbox_user: MailboxUser) -> MailboxUser:
    """A new Dovecot mailbox whose login is the tenant's credential 'box'."""
    add_login(flowrt, "box", mailbox_user.address, mailbox_user.password)
    return mailbox_user


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
