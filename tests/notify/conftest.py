"""Fixtures for the notification tests: a tenant made with the CLI, a clock to step through
days, failed messages written into the MPL the way the engine records them."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.engine.exchange import Headers
from flowrt.errors import ConnectException, MailConnectException
from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore, new_message_id
from flowrt.security import tls as tls_module
from flowrt.tenant import Tenant


def flowrt(tenant: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


class Clock:
    """Time for the notifier: starts now, moves only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("FLOWRT_MASTER_KEY", raising=False)
    monkeypatch.delenv("FLOWRT_HOME", raising=False)
    tls_module.clear_cache()
    yield
    tls_module.clear_cache()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bare_tenant(tmp_path: Path) -> Path:
    """A tenant from `flowrt init`: empty keystore, no credentials."""
    root = tmp_path / "tenant"
    ok(flowrt(root, "init"))
    return root


_counter = itertools.count(1)


def connect_failure() -> MailConnectException:
    cause = ConnectException("Connection refused")
    error = MailConnectException(
        "Could not connect to SMTP host: smtp.example.com, port: 465;",
        hint="is smtp.example.com:465 reachable from here? check with `flowrt test smtp`",
    )
    error.__cause__ = cause
    return error


def record_failure(
    tenant: Path,
    *,
    flow: str = "invoice-forward",
    status: MplStatus = MplStatus.FAILED,
    content: str | None = None,
) -> str:
    """One failed message in the tenant's MPL; its message ID."""
    message_id = new_message_id()
    with MplStore(Tenant(tenant).mpl_path) as store:
        recorder = MplRecorder(store, level=LogLevel.TRACE if content else LogLevel.INFO)
        entry = recorder.begin(
            message_id,
            f"corr-{next(_counter)}",
            flow,
            "1",
            "mail imap plant@mail.plant.example:143/INBOX",
            ["mail smtp accounting@smtp.example.com:465"],
        )
        run = entry.start_run()
        if content is not None:
            now = time.time()
            headers = Headers([("Subject", "Invoice")])
            run.step("set-1", "7", "", "COMPLETED", now, now, content=(headers, content))
        entry.fail(connect_failure(), status=status, failed_step="receiver out")
        recorder.close()
    return message_id
