"""A tenant and a CLI runner for connectivity tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli

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
