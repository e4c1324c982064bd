"""The monitor of a real runtime (`flowrt run --http`) with the real stack: a good flow
forwards a mail through Dovecot and Postfix, a flow with a wrong password fails its polls;
/metrics, /readyz and the flows page say so."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.test_runtime_e2e import (  # the runtime e2e's stack and helpers
    Runtime,
    flowrt,
    mail,
    runtimes,
    stack,
    subjects,
    tenant,
    wait_for,
    write_flow,
)
from tests.servers import DovecotServer

pytestmark = pytest.mark.servers
__all__ = ["runtimes", "stack", "tenant"]  # fixtures, used by name


def monitor_url(runtime: Runtime) -> str:
    def found() -> str:
        for line in runtime.log.read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "monitor serving":
                return str(record["url"])
        return ""

    wait_for(lambda: bool(found()), what="the monitor's address in the runtime log")
    return found()


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return -1.0


def test_metrics_readiness_and_flows_of_a_running_runtime(
    stack: dict[str, Any],
    dovecot: DovecotServer,
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    tenant, source, target = stack["tenant"], stack["source"], stack["target"]
    added = flowrt(
        tenant,
        "credentials",
        "add",
        "wrong",
        "--user",
        source.address,
        "--password-stdin",
        input="not-the-password",
    )
    assert added.exit_code == 0, added.output
    good = write_flow(tmp_path / "good.flow", stack, name="good")
    bad = write_flow(tmp_path / "bad.flow", stack, name="bad", source_credential="wrong")
    runtime = runtimes("--http", "127.0.0.1:0")
    url = monitor_url(runtime)
    assert flowrt(tenant, "deploy", str(good), str(bad)).exit_code == 0
    dovecot.append(source.address, "INBOX", mail("watched"))
    wait_for(lambda: "Fwd: watched" in subjects(dovecot, target.address), what="the mail")

    with httpx.Client(base_url=url, timeout=10) as client:

        def metrics() -> str:
            return client.get("/metrics").text

        wait_for(
            lambda: (
                sample(metrics(), "flowrt_messages_total", flow="good", status="COMPLETED") == 1
                and sample(metrics(), "flowrt_poll_failures_total", poller="bad:imap") >= 1
            ),
            what="the counters",
        )
        text = metrics()
        assert sample(text, "flowrt_polls_total", poller="good:imap") >= 1
        assert sample(text, "flowrt_poll_failures_total", poller="good:imap") in (-1.0, 0.0)
        assert sample(text, "flowrt_receiver_sends_total", flow="good", receiver="out") == 1
        assert sample(text, "flowrt_message_duration_seconds_count", flow="good") == 1
        assert sample(text, "flowrt_runtime_up") == 1
        assert sample(text, "flowrt_dead_letters_total") == 0
        assert sample(text, "flowrt_certificate_expiry_seconds", alias="test-root") > 86400

        def ready() -> httpx.Response:
            return client.get("/readyz")

        wait_for(lambda: "flow bad is ERROR" in ready().json()["reasons"], what="bad in ERROR")
        assert ready().status_code == 503
        flows = client.get("/flows").text
        # on failure, show the flows table rather than the page's head
        assert "AuthenticationFailedException" in flows, flows[flows.find("<tbody") :]
        assert source.password not in flows + text
    assert runtime.stop() == 0
