"""flowrt deploy / undeploy: validation, tenant references, versions, atomicity."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.runtime.deployments import Deployments
from flowrt.tenant import Tenant

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def run(tenant: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=stdin)


@pytest.fixture
def tenant(tmp_path: Path) -> Path:
    root = tmp_path / "tenant"
    assert run(root, "init").exit_code == 0
    return root


def provide_mail_flow_needs(tenant: Path) -> None:
    for name, user in (("plant-mailbox", "plant@example.com"), ("smtp-out", "out@example.com")):
        result = run(
            tenant,
            "credentials",
            "add",
            name,
            "--user",
            user,
            "--password-stdin",
            stdin="secret-pw",
        )
        assert result.exit_code == 0, result.output
    assert run(tenant, "locations", "add", "plant-1", "--proxy", "127.0.0.1:1080").exit_code == 0


def test_each_missing_reference_is_named_with_its_line(tenant: Path) -> None:
    result = run(tenant, "deploy", str(FLOWS / "mail.flow"))
    assert result.exit_code == 1
    assert "mail.flow:10:9: error: credential 'plant-mailbox' does not exist" in result.output
    assert "mail.flow:8:9: error: location ID 'plant-1' is not registered" in result.output
    assert "mail.flow:29:9: error: credential 'smtp-out' does not exist" in result.output
    assert Deployments(Tenant(tenant)).names() == []


def test_deploy_versions_and_unchanged_is_a_no_op(tenant: Path, tmp_path: Path) -> None:
    provide_mail_flow_needs(tenant)
    first = run(tenant, "deploy", str(FLOWS / "mail.flow"))
    assert first.exit_code == 0, first.output
    assert "deployed invoice-forward version 1" in first.output
    assert "no runtime is running" in first.output
    again = run(tenant, "deploy", str(FLOWS / "mail.flow"))
    assert "invoice-forward is unchanged (version 1)" in again.output

    changed = tmp_path / "mail.flow"
    changed.write_text((FLOWS / "mail.flow").read_text().replace("every 5m", "every 1m"))
    result = run(tenant, "deploy", str(changed))
    assert "deployed invoice-forward version 2" in result.output
    deployment = Deployments(Tenant(tenant)).get("invoice-forward")
    assert deployment is not None and deployment.version == 2
    assert "every 1m" in deployment.source
    assert deployment.load().name == "invoice-forward"
    history = tenant / "deployed" / "history" / "invoice-forward"
    assert sorted(p.name for p in history.iterdir()) == ["1.flow", "2.flow"]


def test_invalid_flow_changes_nothing(tenant: Path, tmp_path: Path) -> None:
    provide_mail_flow_needs(tenant)
    assert run(tenant, "deploy", str(FLOWS / "mail.flow")).exit_code == 0
    before = sorted(
        (p.name, p.read_bytes()) for p in (tenant / "deployed").rglob("*") if p.is_file()
    )
    broken = tmp_path / "mail.flow"
    broken.write_text(
        (FLOWS / "mail.flow").read_text().replace("timeout       30s", "timeout       30x")
    )
    result = run(tenant, "deploy", str(FLOWS / "mail.flow"), str(broken))
    assert result.exit_code == 1
    assert "bad duration 30x" in result.output
    assert "nothing was deployed" in result.output
    after = sorted(
        (p.name, p.read_bytes()) for p in (tenant / "deployed").rglob("*") if p.is_file()
    )
    assert after == before


def test_credential_of_the_wrong_kind(tenant: Path) -> None:
    provide_mail_flow_needs(tenant)
    run(tenant, "credentials", "delete", "smtp-out")
    result = run(
        tenant,
        "credentials",
        "add",
        "smtp-out",
        "--kind",
        "secure-parameter",
        "--password-stdin",
        stdin="x",
    )
    assert result.exit_code == 0, result.output
    result = run(tenant, "deploy", str(FLOWS / "mail.flow"))
    assert result.exit_code == 1
    assert (
        "auth encrypted needs a user credential; 'smtp-out' is a secure-parameter" in result.output
    )


def test_undeploy(tenant: Path) -> None:
    provide_mail_flow_needs(tenant)
    run(tenant, "deploy", str(FLOWS / "mail.flow"))
    result = run(tenant, "undeploy", "invoice-forward")
    assert result.exit_code == 0 and "was version 1" in result.output
    assert Deployments(Tenant(tenant)).names() == []
    missing = run(tenant, "undeploy", "invoice-forward")
    assert missing.exit_code == 1
    assert "no deployed flow named 'invoice-forward'" in missing.output


def test_no_tenant_says_how_to_create_one(tmp_path: Path) -> None:
    result = run(tmp_path / "none", "deploy", str(FLOWS / "mail.flow"))
    assert result.exit_code == 1
    assert "flowrt --tenant" in result.output and "init" in result.output


def test_read_only_tenant_is_a_clear_error(tenant: Path) -> None:
    provide_mail_flow_needs(tenant)
    shutil.rmtree(tenant / "deployed", ignore_errors=True)
    tenant.chmod(0o500)
    try:
        result = run(tenant, "deploy", str(FLOWS / "mail.flow"))
    finally:
        tenant.chmod(0o700)
    if result.exit_code == 0:  # root ignores directory permissions
        pytest.skip("running as root: permissions are not enforced")
    assert "read-only" in result.output


def test_encrypt_for_an_ec_certificate_is_refused_at_deploy(tenant: Path, tmp_path: Path) -> None:
    provide_mail_flow_needs(tenant)
    made = run(
        tenant,
        "keystore",
        "generate",
        "partner-ec",
        "--subject",
        "CN=Partner,E=partner@example.com",
        "--san",
        "email:partner@example.com",
        "--key",
        "ec:p256",
    )
    assert made.exit_code == 0, made.output
    text = (FLOWS / "mail.flow").read_text(encoding="utf-8")
    text = text.replace(
        "        attachments   from-message\n",
        '        attachments   from-message\n        encrypt       alias "partner-ec"\n',
        1,
    )
    flow = tmp_path / "enc.flow"
    flow.write_text(text, encoding="utf-8")
    assert run(tenant, "validate", str(flow)).exit_code == 0

    result = run(tenant, "deploy", str(flow))

    assert result.exit_code == 1
    assert (
        "error: encrypt needs an RSA certificate; the key of keystore alias 'partner-ec' is "
        "EC secp256r1 (256)"
    ) in result.output
    assert Deployments(Tenant(tenant)).names() == []
