"""The monitor as users start it: `flowrt monitor` standalone (HTTP and HTTPS from a keystore
key pair) and `flowrt run --http` inside the runtime's event loop."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.monitor.conftest import MonitorProcess, flowrt


def test_standalone_monitor_serves_and_stops_on_sigterm(
    tenant: Path, filled: dict[str, str], processes: Callable[..., MonitorProcess]
) -> None:
    monitor = processes("monitor", "--http", "127.0.0.1:0")
    assert monitor.url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=monitor.url, timeout=10) as client:
        assert client.get("/healthz").text == "ok\n"
        failed = client.get("/api/messages", params={"status": "FAILED"}).json()["messages"]
        assert [m["message_id"] for m in failed] == [filled["bad"]]
        assert client.get(f"/messages/{filled['bad']}").status_code == 200
        assert client.get("/static/monitor.css").status_code == 200
    assert monitor.stop() == 0


def test_https_with_a_keystore_key_pair(
    tenant: Path, processes: Callable[..., MonitorProcess]
) -> None:
    made = flowrt(tenant, "keystore", "generate", "monitor", "--subject", "CN=localhost")
    assert made.exit_code == 0, made.output
    monitor = processes("monitor", "--http", "127.0.0.1:0", "--tls-alias", "monitor")
    assert monitor.url.startswith("https://")
    cert = tenant.parent / "monitor.pem"
    exported = flowrt(tenant, "keystore", "export", "monitor", "--out", str(cert))
    assert exported.exit_code == 0, exported.output
    host, port = monitor.url.removeprefix("https://").rsplit(":", 1)
    presented = ssl.get_server_certificate((host, int(port)))
    assert ssl.PEM_cert_to_DER_cert(presented) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    # self-signed for CN=localhost: checked above by comparison, not by a CA
    with httpx.Client(base_url=monitor.url, verify=False, timeout=10) as client:
        assert client.get("/healthz").text == "ok\n"
    assert monitor.stop() == 0


def test_missing_tls_alias_is_a_clear_error(tenant: Path) -> None:
    result = flowrt(tenant, "monitor", "--http", "127.0.0.1:0", "--tls-alias", "nope")
    assert result.exit_code != 0
    assert "nope" in result.output and "Traceback" not in result.output


def test_runtime_serves_the_monitor_in_its_loop(
    tenant: Path, filled: dict[str, str], processes: Callable[..., MonitorProcess]
) -> None:
    runtime = processes("run", "--log-format", "json", "--http", "127.0.0.1:0")
    with httpx.Client(base_url=runtime.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text  # no flows deployed, stores writable
        text = client.get("/metrics").text
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert {"flowrt_runtime_up", "flowrt_dead_letters_total"} <= names
        up = [s for f in text_string_to_metric_families(text) for s in f.samples]
        assert [s.value for s in up if s.name == "flowrt_runtime_up"] == [1.0]
        assert client.get("/api/messages").json()["messages"][0]["message_id"] == filled["bad"]
    assert runtime.stop() == 0
