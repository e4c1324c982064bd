"""Fixtures for the monitor tests: a tenant made by `flowrt init`, an MPL filled through the
real recorder, the app under Starlette's test client, and `flowrt monitor` as a process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from starlette.testclient import TestClient

from flowrt.cli.main import cli
from flowrt.errors import MessagingException, SSLHandshakeException
from flowrt.monitor.app import MonitorConfig, create_app
from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore, StepStatus
from flowrt.tenant import Tenant

START = 1_780_000_000.0
HINT = (
    "the tenant keystore has no certificate for CN=Example Root CA; run `flowrt test smtp "
    "smtp.example.com:465 --protection smtps --import`"
)
XSS_SUBJECT = "<script>alert(1)</script>"


def flowrt(tenant: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)


@pytest.fixture
def tenant(tmp_path: Path) -> Path:
    root = tmp_path / "tenant"
    result = flowrt(root, "init")
    assert result.exit_code == 0, result.output
    return root


def failure() -> MessagingException:
    outer = MessagingException(
        "Could not connect to SMTP host: smtp.example.com, port: 465", hint=HINT
    )
    outer.__cause__ = SSLHandshakeException(
        "PKIX path building failed: unable to find valid certification path to requested "
        "target (server chain root: CN=Example Root CA)"
    )
    return outer


def fill(tenant: Path, count: int = 0) -> dict[str, str]:
    """A completed message (trace, with the script subject), a failed one (chain and hint),
    and ``count`` more completed ones of flow "bulk"; returns the IDs by name."""
    with MplStore(Tenant(tenant).mpl_path) as store:
        recorder = MplRecorder(store, level=LogLevel.INFO)
        ok = recorder.begin(
            "0190a000-0000-7000-8000-000000000001",
            "<ok@mail.plant.example>",
            "invoice-forward",
            "3",
            "mail imap plant@127.0.0.1:143/INBOX",
            ["mail smtp accounting@127.0.0.1:465"],
            level=LogLevel.TRACE,
            start=START,
        )
        ok.custom_property("subject", XSS_SUBJECT)
        ok.custom_property("customer", "acme")
        ok.log("info", f"forwarding {XSS_SUBJECT}")
        run = ok.start_run(start=START)
        headers = [("Subject", XSS_SUBJECT), ("From", "plant@example.com")]
        body = '<img src=x onerror="alert(2)"> invoice attached'
        run.step(
            "set", "14", "", StepStatus.COMPLETED, START, START + 0.002, content=(headers, body)
        )
        run.finish(MplStatus.COMPLETED, stop=START + 0.01)
        ok.complete(MplStatus.COMPLETED, end=START + 0.01)

        bad = recorder.begin(
            "0190a000-0000-7000-8000-000000000002",
            "<bad@mail.plant.example>",
            "invoice-forward",
            "3",
            "mail imap plant@127.0.0.1:143/INBOX",
            ["mail smtp accounting@smtp.example.com:465"],
            start=START + 1,
            subject="Invoice 2026-0815 overdue",
            mail_from="Supplier Billing <billing@supplier.example>",
        )
        bad.custom_property("customer", "globex")
        run = bad.start_run(start=START + 1)
        run.step("set", "14", "", StepStatus.COMPLETED, START + 1, START + 1.001)
        run.step("accounting", "20", "", StepStatus.FAILED, START + 1.001, START + 1.5, failure())
        run.finish(MplStatus.FAILED, stop=START + 1.5)
        bad.fail(failure(), failed_step="accounting")

        for i in range(count):
            entry = recorder.begin(
                f"0190b000-0000-7000-8000-{i:012d}",
                f"<bulk-{i}@example.com>",
                "bulk",
                "1",
                "mail pop3 bulk@127.0.0.1:110",
                ["mail smtp out@127.0.0.1:25"],
                start=START + 10 + i,
            )
            entry.complete(MplStatus.COMPLETED, end=START + 10.5 + i)
        recorder.close()
    return {"ok": ok.message_id, "bad": bad.message_id}


@pytest.fixture
def filled(tenant: Path) -> dict[str, str]:
    return fill(tenant)


@pytest.fixture
def client(tenant: Path) -> Iterator[TestClient]:
    with TestClient(create_app(MonitorConfig(Tenant(tenant)))) as test_client:
        yield test_client


class MonitorProcess:
    """`flowrt monitor` (or `flowrt run`) as a subprocess on a free loopback port."""

    def __init__(self, tenant: Path, *args: str) -> None:
        self.log = tenant.parent / f"monitor-{time.monotonic_ns()}.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            ["flowrt", "--tenant", str(tenant), *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 20
        while True:
            found = re.search(r"(https?://[\w.\[\]:]+:\d+)", self.log.read_text())
            if found:
                self.url = found.group(1)
                break
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the monitor did not start"
            time.sleep(0.05)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log_file.close()
        return code


@pytest.fixture
def processes(tenant: Path) -> Iterator[Callable[..., MonitorProcess]]:
    started: list[MonitorProcess] = []

    def start(*args: str) -> MonitorProcess:
        process = MonitorProcess(tenant, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.stop()
