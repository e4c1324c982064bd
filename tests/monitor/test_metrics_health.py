"""/metrics (Prometheus text), /healthz and /readyz."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from flowrt import metrics
from flowrt.errors import (
    AuthenticationFailedException,
    MailConnectException,
    MessagingException,
    SendFailedException,
    StepException,
)
from flowrt.monitor.app import MonitorConfig, create_app
from flowrt.runtime.status import RuntimeStatus, now_iso, write_status
from flowrt.tenant import Tenant
from tests.monitor.conftest import flowrt

FLOW = """flow ready-flow {
    sender mail {
        protocol imap
        address "127.0.0.1:1"
        auth plain credential "nobody"
    }
    receiver mail out {
        address "127.0.0.1:2"
        from "a@example.com"
        to "b@example.com"
    }
}
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_standalone_metrics_come_from_the_mpl_and_the_keystore(
    tenant: Path, filled: dict[str, str], client: TestClient, tmp_path: Path
) -> None:
    flowrt(tenant, "keystore", "generate", "monitor-tls", "--subject", "CN=localhost")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    flow = ("flow", "invoice-forward")
    assert found[("flowrt_messages_total", (flow, ("status", "COMPLETED")))] == 1
    assert found[("flowrt_messages_total", (flow, ("status", "FAILED")))] == 1
    assert found[("flowrt_dead_letters_total", ())] == 0
    assert found[("flowrt_runtime_up", ())] == 0
    expiry = [v for (name, labels), v in found.items() if name.startswith("flowrt_certificate")]
    aliases = [dict(labels)["alias"] for (name, labels) in found if name.startswith("flowrt_cert")]
    assert expiry and all(v > 86400 for v in expiry)
    assert "monitor-tls" in aliases


def test_runtime_counters(tenant: Path) -> None:
    metrics.message_done("m-flow", "COMPLETED", 0.02)
    metrics.message_done("m-flow", "FAILED", 3.0)
    metrics.poll_done("m-flow:imap", ok=True)
    metrics.poll_done("m-flow:imap", ok=False)
    metrics.send_done("m-flow", "out")
    metrics.send_done("m-flow", "out", SendFailedException("550 no", retryable=False))
    metrics.send_done("m-flow", "out", MessagingException("451 later", retryable=True))
    found = samples(generate_latest(metrics.REGISTRY).decode())
    flow = ("flow", "m-flow")
    assert found[("flowrt_messages_total", (flow, ("status", "FAILED")))] >= 1
    assert found[("flowrt_message_duration_seconds_count", (flow,))] >= 2
    assert found[("flowrt_polls_total", (("poller", "m-flow:imap"),))] >= 2
    assert found[("flowrt_poll_failures_total", (("poller", "m-flow:imap"),))] >= 1
    assert found[("flowrt_receiver_sends_total", (flow, ("receiver", "out")))] >= 1
    labels = (flow, ("receiver", "out"), ("reply_class", "5xx"))
    assert found[("flowrt_receiver_send_failures_total", labels)] >= 1
    labels = (flow, ("receiver", "out"), ("reply_class", "4xx"))
    assert found[("flowrt_receiver_send_failures_total", labels)] >= 1
    assert ("flowrt_dead_letters_total", ()) in found
    config = MonitorConfig(Tenant(tenant), live_states=dict, runtime_up=lambda: True)
    with TestClient(create_app(config)) as client:
        served = samples(client.get("/metrics").text)
    assert served[("flowrt_runtime_up", ())] == 1
    assert ("flowrt_polls_total", (("poller", "m-flow:imap"),)) in served


def test_reply_classes() -> None:
    assert metrics.reply_class(AuthenticationFailedException("535 no")) == "auth"
    assert metrics.reply_class(MailConnectException("refused")) == "connection"
    assert metrics.reply_class(SendFailedException("452", retryable=True)) == "4xx"
    assert metrics.reply_class(MessagingException("554", retryable=False)) == "5xx"
    assert metrics.reply_class(StepException("script failed")) == "other"


def test_healthz_and_readyz(tenant: Path, tmp_path: Path) -> None:
    flow_file = tmp_path / "ready.flow"
    flow_file.write_text(FLOW)
    added = flowrt(
        tenant,
        "credentials",
        "add",
        "nobody",
        "--user",
        "n@example.com",
        "--password-stdin",
        input="secret-password-1",
    )
    assert added.exit_code == 0, added.output
    deployed = flowrt(tenant, "deploy", str(flow_file))
    assert deployed.exit_code == 0, deployed.output
    t = Tenant(tenant)
    with TestClient(create_app(MonitorConfig(t))) as client:
        assert client.get("/healthz").text == "ok\n"
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "ready": False,
            "reasons": ["no runtime is running on this tenant"],
        }
        status = RuntimeStatus(pid=1, host="h", started_at=now_iso(), heartbeat_at=now_iso())
        (tenant / "runtime").mkdir(exist_ok=True)
        write_status(t, status)
        data = json.loads((tenant / "runtime" / "status.json").read_text())
        data["flows"] = {"ready-flow": {"name": "ready-flow", "version": 1, "state": "ERROR"}}
        (tenant / "runtime" / "status.json").write_text(json.dumps(data))
        not_ready = client.get("/readyz").json()
        assert not_ready["reasons"] == ["flow ready-flow is ERROR"]
        data["flows"]["ready-flow"]["state"] = "STARTED"
        data["heartbeat_at"] = dt.datetime.now(dt.UTC).isoformat()
        (tenant / "runtime" / "status.json").write_text(json.dumps(data))
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}
        flows = client.get("/flows").text
        assert "ready-flow" in flows and "STARTED" in flows
        for url in ("/flows", "/keystore", "/api/flows", "/api/keystore", "/metrics"):
            assert "secret-password-1" not in client.get(url).text


def test_worker_counts_add_into_the_runtime_counters() -> None:
    """A flow's worker processes report their totals; the runtime adds what is new, and a
    worker that started over (counting from 0) adds its new counts, never a negative."""

    def messages() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "flowrt_messages_total", {"flow": "w-flow", "status": "COMPLETED"}
        )
        return value or 0.0

    def dead() -> float:
        return metrics.REGISTRY.get_sample_value("flowrt_dead_letters_total") or 0.0

    start, start_dead = messages(), dead()
    seen: metrics.Totals = {}
    labels = {"flow": "w-flow", "status": "COMPLETED"}
    metrics.add_counts([("flowrt_messages", labels, 3.0), ("flowrt_dead_letters", {}, 1.0)], seen)
    assert (messages() - start, dead() - start_dead) == (3.0, 1.0)
    metrics.add_counts([("flowrt_messages", labels, 5.0), ("flowrt_dead_letters", {}, 1.0)], seen)
    assert (messages() - start, dead() - start_dead) == (5.0, 1.0)
    metrics.add_counts([("flowrt_messages", labels, 2.0)], seen)  # the worker started over
    assert messages() - start == 7.0
    metrics.add_counts([("flowrt_unknown", {}, 9.0)], seen)  # a name this runtime lacks
    names = {total[0] for total in metrics.counter_totals()}
    assert {"flowrt_messages", "flowrt_dead_letters"} <= names


def test_worker_durations_add_into_the_runtime_histogram() -> None:
    """The duration histogram counts a flow's mails whichever process handled them."""

    def count(le: str = "") -> float:
        name = "flowrt_message_duration_seconds_" + ("bucket" if le else "count")
        labels = {"flow": "d-flow"} | ({"le": le} if le else {})
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    metrics.message_done("d-flow", "COMPLETED", 0.02)  # the runtime's own partition
    seen: dict[str, list[float]] = {}
    worker = [0.0] * (len(metrics.DURATION.BOUNDS) + 2)
    worker[0], worker[3], worker[-1] = 2, 1, 0.06  # two mails of 5 ms or less, one of 50
    metrics.add_durations({"d-flow": worker}, seen)
    assert (count(), count("0.005"), count("0.025"), count("0.05")) == (4, 2, 3, 4)
    worker[0] += 1
    metrics.add_durations({"d-flow": worker}, seen)  # only what is new is added
    assert (count(), count("0.005")) == (5, 3)
    metrics.add_durations({"d-flow": [1.0, 0.0]}, seen)  # rows of other buckets: skipped
    assert count() == 5
    sums = metrics.REGISTRY.get_sample_value(
        "flowrt_message_duration_seconds_sum", {"flow": "d-flow"}
    )
    assert sums == pytest.approx(0.08)
    assert "d-flow" in metrics.duration_totals()
