"""Every file of a working tenant, damaged in turn: each command that reads it ends with an
error that names the file, and none ends in a traceback or shows a library's class name."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from tests.servers import TestCA, free_port

COMMANDS = [
    ("status",), ("status", "--failures"), ("credentials", "list"), ("keystore", "list"),
    ("locations", "list"), ("mpl", "list"), ("locks", "list"), ("deadletter", "list"),
    ("notify", "rule", "list"), ("notify", "log"), ("params", "list"), ("deploy", "FLOW"),
    ("run", "--once"),
]  # fmt: skip
DAMAGES = {
    "garbage": lambda data: b"\xff\xfe\x8f\x00" + bytes(range(256)) * 4,
    "torn": lambda data: data[: len(data) // 2] + b"\xff\x00",
    "empty": lambda data: b"",
}
PYTHON = ("Traceback", "DecodeError", "DatabaseError", "OperationalError", "KeyError",
          "ValueError", "TypeError", "AttributeError", "InvalidTag", "Error(")  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _logging_as_it_was() -> Iterator[None]:
    """`flowrt run` configures structlog for its process (here: into CliRunner's stream);
    the tests after these must find it as it was (module scope: before the tenant is made)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def shown(output: str) -> str:
    """What a person reads: the runtime's JSON log lines without ``library_cause``, the one
    field that keeps the library's exception for a bug report."""
    lines = []
    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                event.pop("library_cause", None)
                line = json.dumps(event)
        lines.append(line)
    return "\n".join(lines)


def invoke(tenant: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input="secret")


@pytest.fixture(scope="module")
def working_tenant(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Path:
    """A tenant with a file of every kind: credentials, keystore, locations, notification
    settings and log, a deployment, an MPL and a state database with a failed poll."""
    root = tmp_path_factory.mktemp("sweep")
    tenant = root / "tenant"
    ca = root / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    flow = root / "poll.flow"
    flow.write_text(
        f"""flow poll {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{free_port()}"
        protection    off
        auth          encrypted credential "box"
        timeout       1s
    }}
    receiver mail out {{
        address       "127.0.0.1:25"
        protection    off
        from          "a@example.com"
        to            "b@example.com"
    }}
}}
""",
        encoding="utf-8",
    )
    for args in [
        ("init",),
        ("credentials", "add", "box", "--user", "u@example.com", "--password-stdin"),
        ("keystore", "add", "root", str(ca)),
        ("locations", "add", "plant-1", "--proxy", "127.0.0.1:1080"),
        ("notify", "limit", "5"),
        ("deploy", str(flow)),
    ]:
        result = invoke(tenant, *args)
        assert result.exit_code == 0, (args, result.output)
    assert invoke(tenant, "run", "--once").exit_code == 1  # the poll fails: a failure row
    invoke(tenant, "notify", "log")  # creates the notification log
    return tenant


def tenant_files(tenant: Path) -> list[str]:
    return sorted(
        str(p.relative_to(tenant))
        for p in tenant.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.stat().st_size > 0
    )


def test_every_damaged_tenant_file_is_an_error_that_names_it(
    working_tenant: Path, tmp_path: Path
) -> None:
    files = tenant_files(working_tenant)
    assert {"credentials.enc", "keystore.p12", "locations.json", "mpl.sqlite", "notify.json",
            "notify.sqlite", "state.sqlite", "tenant.json"} <= set(files)  # fmt: skip
    flow = next(working_tenant.glob("deployed/*.flow"))
    problems: list[str] = []
    for name in files:
        for kind, damage in DAMAGES.items():
            tenant = tmp_path / "t"
            shutil.rmtree(tenant, ignore_errors=True)
            shutil.copytree(working_tenant, tenant)
            path = tenant / name
            path.write_bytes(damage(path.read_bytes()))
            for command in COMMANDS:
                args = [str(flow) if a == "FLOW" else a for a in command]
                result = invoke(tenant, *args)
                where = f"{name} {kind}: flowrt {' '.join(command)}"
                if result.exception is not None and not isinstance(result.exception, SystemExit):
                    problems.append(f"{where}: {result.exception!r}")
                text = shown(result.output)
                python = [word for word in PYTHON if word in text]
                if python:
                    problems.append(f"{where}: shows {python}: {text[-300:]!r}")
                if result.exit_code not in (0, 1, 2):
                    problems.append(f"{where}: exit code {result.exit_code}")
                elif result.exit_code != 0 and command[0] != "run" and Path(name).name not in text:
                    problems.append(f"{where}: fails without naming the file: {text[-300:]!r}")
    assert not problems, "\n".join(problems)
