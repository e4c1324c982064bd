"""The JSON API and the pages over HTTP: filters, shapes (those of `flowrt mpl ... --format
json`), pagination, errors, escaping."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.testclient import TestClient

from tests.monitor.conftest import HINT, XSS_SUBJECT, fill, flowrt

PREFIX = "0190a000-0000-7000-8000-00000000000"


def cli_json(tenant: Path, *args: str) -> object:
    result = flowrt(tenant, *args, "--format", "json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def test_messages_api_has_the_fields_and_filters_of_mpl_list(
    tenant: Path, client: TestClient
) -> None:
    fill(tenant, count=3)
    for query, cli_args in [
        ("", []),
        ("?status=FAILED", ["--status", "FAILED"]),
        ("?status=failed", ["--status", "FAILED"]),
        ("?flow=bulk", ["--flow", "bulk"]),
        ("?property=customer%3Dacme", ["--property", "customer=acme"]),
        (f"?id={PREFIX}", ["--id", PREFIX]),
        ("?since=2026-05-28T20:26:49Z", ["--since", "2026-05-28T20:26:49Z"]),
        ("?until=2026-05-28T20:26:41Z", ["--until", "2026-05-28T20:26:41Z"]),
    ]:
        response = client.get("/api/messages" + query)
        assert response.status_code == 200, (query, response.text)
        body = response.json()
        assert body["messages"] == cli_json(tenant, "mpl", "list", *cli_args), query
        assert body["next"] is None
    failed = client.get("/api/messages?status=FAILED").json()["messages"]
    assert [m["failed_step"] for m in failed] == ["accounting"]


def test_text_filter_finds_correlation_ids(filled: dict[str, str], client: TestClient) -> None:
    found = client.get("/api/messages?text=BAD@mail").json()["messages"]
    assert [m["message_id"] for m in found] == [filled["bad"]]
    assert client.get("/api/messages?text=100%25").json()["messages"] == []  # % is literal


def test_text_filter_finds_subject_and_sender(filled: dict[str, str], client: TestClient) -> None:
    for text in ("invoice 2026-0815", "billing@supplier"):
        found = client.get(f"/api/messages?text={text}").json()["messages"]
        assert [m["message_id"] for m in found] == [filled["bad"]], text


def test_pages_follow_the_cursor_through_every_entry_once(tenant: Path, client: TestClient) -> None:
    fill(tenant, count=7)
    seen: list[str] = []
    url: str | None = "/api/messages?limit=3"
    pages = 0
    while url is not None and pages < 10:
        body = client.get(url).json()
        assert len(body["messages"]) <= 3
        seen += [m["message_id"] for m in body["messages"]]
        url = body["next_url"]
        pages += 1
    every = [m["message_id"] for m in cli_json(tenant, "mpl", "list", "--limit", "100")]  # type: ignore[union-attr]
    assert seen == every and len(seen) == 9
    assert pages == 3


def test_message_api_is_mpl_show(tenant: Path, filled: dict[str, str], client: TestClient) -> None:
    for message_id in filled.values():
        response = client.get(f"/api/messages/{message_id}")
        assert response.status_code == 200
        assert response.json() == cli_json(tenant, "mpl", "show", message_id)
    bad = client.get(f"/api/messages/{filled['bad']}").json()
    assert bad["error"]["hint"] == HINT
    assert [lv["type"] for lv in bad["error"]["levels"]] == [
        "MessagingException",
        "SSLHandshakeException",
    ]


def test_bad_requests_say_what_is_wrong(filled: dict[str, str], client: TestClient) -> None:
    cases = {
        "/api/messages?status=LOST": (400, "status: 'LOST' is not one of"),
        "/api/messages?since=yesterday": (400, "since:"),
        "/api/messages?since=1h&until=2h": (400, "since: it is after until"),
        "/api/messages?limit=0": (400, "limit: 0 is not between 1 and 500"),
        "/api/messages?limit=x": (400, "limit: 'x' is not a number"),
        "/api/messages?property=novalue": (400, "property: 'novalue' is not NAME=VALUE"),
        "/api/messages?after=garbage": (400, "'garbage' is not a page cursor"),
        "/api/messages/0190a000-0000": (400, "matches more than one entry"),
        "/api/messages/ffffffff-nothing": (404, "no MPL entry with message ID"),
    }
    for url, (code, text) in cases.items():
        response = client.get(url)
        assert response.status_code == code, url
        assert text in response.json()["error"], (url, response.json())
    page = client.get("/messages?status=LOST")
    assert page.status_code == 400
    assert "is not one of" in page.text and "Traceback" not in page.text
    assert client.get("/messages/ffffffff-nothing").status_code == 404


def test_an_empty_tenant_lists_nothing(client: TestClient) -> None:
    assert client.get("/api/messages").json() == {"messages": [], "next": None, "next_url": None}
    assert client.get("/messages").status_code == 200
    assert client.get("/api/messages/0190a000-0000-7000").status_code == 404


def test_message_page_shows_chain_hint_steps_and_escapes_content(
    filled: dict[str, str], client: TestClient
) -> None:
    page = client.get(f"/messages/{filled['bad']}")
    assert page.status_code == 200
    html = page.text
    assert "MessagingException: Could not connect to SMTP host: smtp.example.com" in html
    assert "SSLHandshakeException: PKIX path building failed" in html
    assert "the tenant keystore has no certificate for CN=Example Root CA" in html
    assert "accounting" in html and "500.0 ms" in html  # the failed step and its duration
    assert "script-src 'self'" in page.headers["content-security-policy"]

    ok = client.get(f"/messages/{filled['ok']}").text
    assert XSS_SUBJECT not in ok
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in ok  # subject: property, log, content
    assert "<img src=x" not in ok and "&lt;img src=x" in ok
    assert '<script src="/static/monitor.js" defer></script>' in ok  # the only script


def test_content_is_shown_only_at_trace(filled: dict[str, str], client: TestClient) -> None:
    ok = client.get(f"/api/messages/{filled['ok']}").json()
    assert ok["runs"][0]["steps"][0]["content"]["body"].endswith("invoice attached")
    bad_page = client.get(f"/messages/{filled['bad']}").text
    assert "content after" not in bad_page


def test_list_page_filters_are_in_the_url(filled: dict[str, str], client: TestClient) -> None:
    page = client.get("/messages?status=FAILED&flow=invoice-forward")
    assert page.status_code == 200
    assert filled["bad"] in page.text and filled["ok"] not in page.text
    assert '<option value="FAILED" selected>' in page.text
    assert 'http-equiv="refresh"' in page.text
    first = client.get("/", follow_redirects=False)
    assert first.status_code == 307 and first.headers["location"] == "/messages"


def test_flows_and_keystore(tenant: Path, filled: dict[str, str], client: TestClient) -> None:
    assert client.get("/api/flows").json() == cli_json(tenant, "status")
    page = client.get("/flows")
    assert page.status_code == 200 and "Runtime not running" in page.text
    keystore = client.get("/api/keystore").json()
    listed = cli_json(tenant, "keystore", "list")
    without = [{k: v for k, v in row.items() if k != "expires_in_seconds"} for row in keystore]
    assert without == listed
    assert client.get("/keystore").status_code == 200


def test_message_page_shows_a_dead_letter_and_how_to_replay_it(
    tenant: Path, filled: dict[str, str], client: TestClient
) -> None:
    from flowrt.mpl import MplStore
    from flowrt.tenant import Tenant

    assert "Dead letter and replay" not in client.get(f"/messages/{filled['ok']}").text
    with MplStore(Tenant(tenant).mpl_path) as store:
        store.add_property(filled["bad"], "dead-letter", 'folder "Failed"')
        store.add_property(filled["bad"], "attempts", "5")
    page = client.get(f"/messages/{filled['bad']}").text
    assert "Dead-lettered" in page and "folder &#34;Failed&#34; after 5 attempt(s)" in page
    assert f"flowrt deadletter replay {filled['bad']}" in page
    with MplStore(Tenant(tenant).mpl_path) as store:
        store.add_property(filled["bad"], "replayed", "2026-12-06T04:00:00Z")
    page = client.get(f"/messages/{filled['bad']}").text
    assert "Replayed" in page and "2026-12-06T04:00:00Z" in page
    assert "flowrt deadletter replay" not in page
