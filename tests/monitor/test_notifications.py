"""The notifications view: the alert attempts of `flowrt notify log`, as a page and JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

from starlette.testclient import TestClient

from flowrt.notify.store import NotifyStore
from tests.monitor.conftest import XSS_SUBJECT, flowrt


def test_notifications_are_the_notify_log(
    tenant: Path, filled: dict[str, str], client: TestClient
) -> None:
    now = time.time()
    with NotifyStore(tenant / "notify.sqlite") as store:
        sent = store.add(
            now=now - 60,
            rule="failures",
            trigger="message-failed",
            event_key="m1",
            recipient="oncall@example.com",
            status="pending",
            subject=f"flowrt: invoice-forward failed: {XSS_SUBJECT}",
            body="...",
            mpl_id=filled["bad"],
        )
        store.mark_sent(sent.id, now=now - 59, reply="250 2.0.0 Ok", digested=[])
        failed = store.add(
            now=now,
            rule="failures",
            trigger="message-failed",
            event_key="m2",
            recipient="ops@example.com",
            status="pending",
            subject="flowrt: orders failed",
            body="...",
        )
        store.mark_failed(
            failed.id,
            now=now,
            chain="MessagingException: Could not connect to SMTP host: mail, port: 465",
            hint="start the notification server",
            next_try=now + 30,
        )
    for query, args in [
        ("", []),
        ("?status=failed", ["--status", "failed"]),
        ("?to=oncall@example.com", ["--to", "oncall@example.com"]),
    ]:
        cli = flowrt(tenant, "notify", "log", *args, "--format", "json")
        assert cli.exit_code == 0, cli.output
        assert client.get("/api/notifications" + query).json() == json.loads(cli.stdout)
    page = client.get("/notifications")
    assert page.status_code == 200
    assert XSS_SUBJECT not in page.text and "&lt;script&gt;" in page.text
    assert "start the notification server" in page.text
    assert f'href="/messages/{filled["bad"]}"' in page.text
    bad = client.get("/api/notifications?status=lost")
    assert bad.status_code == 400 and "status: 'lost' is not one of" in bad.json()["error"]


def test_no_notifications_yet(client: TestClient) -> None:
    assert client.get("/api/notifications").json() == []
    assert "No alerts match" in client.get("/notifications").text
