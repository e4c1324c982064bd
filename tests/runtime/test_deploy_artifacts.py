"""flowrt deploy with parameters and scripts, and flowrt params: what is stored, what is
refused (with file:line:col), and that a refusal stores nothing. No servers needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.runtime.deployments import Deployments
from flowrt.tenant import Tenant

FLOW = """flow forward {
    sender mail {
        protocol      imap
        address       "${param.IMAP_HOST}:993"
        protection    imaps
        auth          plain credential "inbox"
        poll          every param.EVERY:5m
    }
    pipeline {
%(steps)s
    }
    receiver mail out {
        address    "smtp.example.com:465"
        protection smtps
        from       "flowrt@example.com"
        to         "${param.TARGET}"
    }
}
"""


def run(tenant: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], env=env)


@pytest.fixture
def tenant(tmp_path: Path) -> Path:
    root = tmp_path / "tenant"
    assert run(root, "init").exit_code == 0
    added = CliRunner().invoke(
        cli,
        ["--tenant", str(root), "credentials", "add", "inbox", "--user", "u", "--password-stdin"],
        input="pw",
    )
    assert added.exit_code == 0, added.output
    return root


def write_flow(folder: Path, steps: str = '        log info "hello"') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "forward.flow"
    path.write_text(FLOW % {"steps": steps})
    return path


def stored(tenant: Path) -> list[tuple[str, bytes]]:
    return (
        sorted(
            (str(p.relative_to(tenant)), p.read_bytes())
            for p in (tenant / "deployed").rglob("*")
            if p.is_file()
        )
        if (tenant / "deployed").exists()
        else []
    )


def dry_run(tenant: Path, *args: str, env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    result = run(tenant, "deploy", *args, "--dry-run", "--format", "json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_deploy_refuses_parameters_without_values_naming_their_lines(
    tenant: Path, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path / "flows")
    result = run(tenant, "deploy", str(flow))
    assert result.exit_code == 1
    assert "forward.flow:4:32: error: parameter IMAP_HOST has no value" in result.output
    assert "forward.flow:16:29: error: parameter TARGET has no value" in result.output
    assert "EVERY" not in result.output  # it has a default
    assert "nothing was deployed" in result.output
    assert stored(tenant) == []


def test_precedence_file_over_environment_over_tenant_over_default(
    tenant: Path, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path / "flows")
    assert run(tenant, "params", "set", "forward", "IMAP_HOST", "tenant.example").exit_code == 0
    assert run(tenant, "params", "set", "forward", "TARGET", "tenant@example.com").exit_code == 0
    plan = dry_run(tenant, str(flow))
    (row,) = plan["flows"]
    assert {p["name"]: p["source"] for p in row["params"]} == {
        "IMAP_HOST": "tenant",
        "TARGET": "tenant",
    }
    assert row["defaults"] == ["EVERY"]

    env = {"FLOWRT_PARAM_TARGET": "env@example.com", "FLOWRT_PARAM_EVERY": "1m"}
    params = tmp_path / "prod.toml"
    params.write_text('TARGET = "file@example.com"\n')
    (row,) = dry_run(tenant, str(flow), "--params", str(params), env=env)["flows"]
    values = {p["name"]: (p["value"], p["source"]) for p in row["params"]}
    assert values == {
        "IMAP_HOST": ("tenant.example", "tenant"),
        "TARGET": ("file@example.com", f"file {params}"),
        "EVERY": ("1m", "environment"),
    }
    assert stored(tenant) == []  # a dry run stores nothing


def test_a_parameter_file_that_does_not_parse_deploys_nothing(tenant: Path, tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flows")
    params = tmp_path / "bad.toml"
    params.write_text('IMAP_HOST = "a"\nTARGET = \n')
    result = run(tenant, "deploy", str(flow), "--params", str(params))
    assert result.exit_code == 1
    assert f"{params}:2:10: invalid value" in result.output
    assert 'expected NAME = "value"' in result.output
    params.write_text('IMAP_HOST = "a"\n\n  smtp-target = "x"\nDB_PASSWORD = "s3cret"\n')
    result = run(tenant, "deploy", str(flow), "--params", str(params))
    assert result.exit_code == 1
    assert f"{params}:3:3: bad parameter name 'smtp-target'" in result.output
    assert f"{params}:4:1: parameter DB_PASSWORD looks like a secret" in result.output
    assert "s3cret" not in result.output
    assert stored(tenant) == []


def test_params_set_refuses_secret_and_bad_names(tenant: Path) -> None:
    result = run(tenant, "params", "set", "forward", "SMTP_PASSWORD", "hunter2")
    assert result.exit_code == 2
    assert "looks like a secret" in result.output and "flowrt credentials add" in result.output
    assert "hunter2" not in result.output
    assert run(tenant, "params", "set", "forward", "1X", "v").exit_code == 2
    assert not (tenant / "params").exists()


def test_params_set_redeploys_and_a_bad_value_changes_nothing(tenant: Path, tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flows")
    params = tmp_path / "dev.toml"
    params.write_text('IMAP_HOST = "imap.dev"\nTARGET = "dev@example.com"\n')
    assert run(tenant, "deploy", str(flow), "--params", str(params)).exit_code == 0

    changed = run(tenant, "params", "set", "forward", "TARGET", "other@example.com")
    assert changed.exit_code == 0, changed.output
    assert "deployed forward version 2" in changed.output
    deployment = Deployments(Tenant(tenant)).get("forward")
    assert deployment is not None
    assert deployment.params == {"IMAP_HOST": "imap.dev", "TARGET": "other@example.com"}
    assert deployment.load().receivers[0].to[0].literal == "other@example.com"

    before = stored(tenant)
    refused = run(tenant, "params", "set", "forward", "EVERY", "never")
    assert refused.exit_code == 1
    assert "forward.flow:7:29: error: poll: bad duration never" in refused.output
    assert "nothing was changed" in refused.output
    assert stored(tenant) == before
    listed = json.loads(run(tenant, "params", "list", "--format", "json").stdout)
    assert {(r["name"], r["tenant"], r["deployed"]) for r in listed} == {
        ("IMAP_HOST", None, "imap.dev"),
        ("TARGET", "other@example.com", "other@example.com"),
    }
    unknown = run(tenant, "params", "set", "forward", "TARGT", "x")
    assert unknown.exit_code == 2 and "uses no parameter TARGT" in unknown.output

    removed = run(tenant, "params", "unset", "forward", "TARGET")
    assert removed.exit_code == 1  # the flow has no default for it: refused
    assert "parameter TARGET has no value" in removed.output
    assert stored(tenant) == before


def test_a_missing_script_module_fails_deploy_with_the_flow_line(
    tenant: Path, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path / "flows", '        script "enrich:apply"')
    params = tmp_path / "p.toml"
    params.write_text('IMAP_HOST = "h"\nTARGET = "t@example.com"\n')
    result = run(tenant, "deploy", str(flow), "--params", str(params))
    assert result.exit_code == 1
    assert "forward.flow:10:9: error: script \"enrich:apply\": no module 'enrich'" in result.output
    assert "nothing was deployed: the scripts above cannot be loaded" in result.output
    assert stored(tenant) == []

    (flow.parent / "enrich.py").write_text("def other(exchange):\n    pass\n")
    result = run(tenant, "deploy", str(flow), "--params", str(params))
    assert result.exit_code == 1
    assert "forward.flow:10:9: error: script \"enrich:apply\": 'enrich' has no 'apply'" in (
        result.output
    )
    assert stored(tenant) == []


def test_scripts_and_what_they_import_from_the_folder_are_stored_with_the_version(
    tenant: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "flows"
    flow = write_flow(folder, '        script "enrich:apply"')
    (folder / "enrich.py").write_text(
        "import json\nfrom rates import RATE\nimport codes.table\n\n"
        "def apply(exchange):\n    exchange.properties['rate'] = RATE\n"
    )
    (folder / "rates.py").write_text("RATE = 3\n")
    (folder / "codes").mkdir()
    (folder / "codes" / "__init__.py").write_text("")
    (folder / "codes" / "table.py").write_text("CODES = {}\n")
    (folder / "unrelated.py").write_text("raise SystemExit('never imported')\n")
    params = tmp_path / "p.toml"
    params.write_text('IMAP_HOST = "h"\nTARGET = "t@example.com"\n')

    (row,) = dry_run(tenant, str(flow), "--params", str(params))["flows"]
    assert row["scripts"] == [
        {"module": "enrich", "function": "apply", "line": 10, "bundled": True}
    ]
    assert sorted(row["script_files"]) == [
        "codes/__init__.py",
        "codes/table.py",
        "enrich.py",
        "rates.py",
    ]
    text = run(tenant, "deploy", str(flow), "--params", str(params), "--dry-run")
    assert "script enrich:apply (line 10, bundled)" in text.output
    assert "nothing was stored (--dry-run)" in text.output
    assert stored(tenant) == []

    assert run(tenant, "deploy", str(flow), "--params", str(params)).exit_code == 0
    scripts = tenant / "deployed" / "scripts" / "forward" / "1"
    assert sorted(p.relative_to(scripts).as_posix() for p in scripts.rglob("*.py")) == [
        "codes/__init__.py",
        "codes/table.py",
        "enrich.py",
        "rates.py",
    ]
    assert not list(scripts.rglob("__pycache__"))
    again = run(tenant, "deploy", str(flow), "--params", str(params))
    assert "forward is unchanged (version 1)" in again.output
    (folder / "rates.py").write_text("RATE = 4\n")  # a helper changed: a new version
    assert (
        "deployed forward version 2"
        in run(tenant, "deploy", str(flow), "--params", str(params)).output
    )


def test_simulate_takes_parameters_as_deploy_does(tenant: Path, tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flows")
    sample = tmp_path / "sample.eml"
    sample.write_bytes(b"From: a@example.com\r\nSubject: hi\r\n\r\nHello.\r\n")
    missing = run(tenant, "simulate", str(flow), "--message", str(sample))
    assert missing.exit_code == 1
    assert "forward.flow:4:32: error: parameter IMAP_HOST has no value" in missing.output
    assert run(tenant, "params", "set", "forward", "IMAP_HOST", "h").exit_code == 0
    params = tmp_path / "p.toml"
    params.write_text('TARGET = "sim@example.com"\n')
    result = run(tenant, "simulate", str(flow), "--message", str(sample), "--params", str(params))
    assert result.exit_code == 0, result.output
    assert "envelope: flowrt@example.com -> sim@example.com" in result.output
