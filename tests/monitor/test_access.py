"""The bearer token: created once by `flowrt monitor token`, kept hashed, required for
everything but /healthz once it exists; non-loopback addresses need one."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from starlette.testclient import TestClient

from flowrt.monitor.app import COOKIE, MonitorConfig, create_app
from flowrt.monitor.auth import TOKEN_FILE
from flowrt.tenant import Tenant
from tests.monitor.conftest import flowrt

PROTECTED = [
    "/readyz",
    "/metrics",
    "/messages",
    "/flows",
    "/keystore",
    "/notifications",
    "/api/messages",
    "/api/messages/0190a000-0000-7000-8000-000000000002",
    "/api/flows",
    "/api/keystore",
    "/api/notifications",
]


def new_token(tenant: Path) -> str:
    result = flowrt(tenant, "monitor", "token")
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_token_is_printed_once_and_stored_hashed(tenant: Path) -> None:
    token = new_token(tenant)
    assert token.startswith("frt_") and len(token) > 40
    path = tenant / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text()
    assert token not in stored and len(json.loads(stored)["sha256"]) == 64
    assert not any(token in p.read_text(errors="ignore") for p in tenant.rglob("*") if p.is_file())


def test_without_a_token_everything_is_refused_but_healthz(
    tenant: Path, filled: dict[str, str]
) -> None:
    token = new_token(tenant)
    with TestClient(create_app(MonitorConfig(Tenant(tenant)))) as client:
        assert client.get("/healthz").status_code == 200
        for url in PROTECTED:
            response = client.get(url, follow_redirects=False)
            if url.startswith(("/api/", "/metrics", "/readyz")):
                assert response.status_code == 401, url
                assert response.headers["www-authenticate"].startswith("Bearer")
            else:  # a browser is sent to the login page, and back afterwards
                assert response.status_code == 303, url
                assert response.headers["location"] == f"/login?next={url}"
            wrong = client.get(url, headers={"Authorization": "Bearer frt_wrong"})
            assert wrong.status_code in (401, 200) and "frt_wrong" not in wrong.text
            if url.startswith("/api/"):
                assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        for url in PROTECTED:
            assert client.get(url, headers=auth).status_code in (200, 503), url
        assert client.get("/readyz", headers=auth).status_code == 503  # no runtime


def test_login_sets_a_cookie_and_a_new_token_replaces_the_old(tenant: Path) -> None:
    old = new_token(tenant)
    with TestClient(create_app(MonitorConfig(Tenant(tenant)))) as client:
        refused = client.post("/login", data={"token": "nope", "next": "/flows"})
        assert refused.status_code == 401 and "not valid" in refused.text
        response = client.post(
            "/login", data={"token": old, "next": "/flows"}, follow_redirects=False
        )
        assert response.status_code == 303 and response.headers["location"] == "/flows"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert client.get("/api/flows").status_code == 200  # the cookie
        evil = client.post(
            "/login", data={"token": old, "next": "//evil.example/"}, follow_redirects=False
        )
        assert evil.headers["location"] == "/messages"
        new = new_token(tenant)
        assert client.get("/api/flows").status_code == 401  # the old one stopped working
        client.cookies.clear()
        headers = {"Authorization": f"Bearer {new}"}
        assert client.get("/api/flows", headers=headers).status_code == 200
    assert COOKIE == "flowrt_monitor"


def test_non_loopback_needs_a_token(tenant: Path) -> None:
    result = flowrt(tenant, "monitor", "--http", "0.0.0.0:0")
    assert result.exit_code == 2
    assert "refusing to serve the monitor on 0.0.0.0:0 without a token" in result.output
    assert "flowrt monitor token" in result.output and "Traceback" not in result.output
    # a process of its own: `flowrt run` configures the process's logging
    run = subprocess.run(
        ["flowrt", "--tenant", str(tenant), "run", "--http", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "without a token" in run.stderr and "Traceback" not in run.stderr
    bad = flowrt(tenant, "monitor", "--http", "localhost")
    assert bad.exit_code == 2 and "'localhost' is not HOST:PORT" in bad.output


def test_a_non_loopback_server_refuses_all_when_the_token_goes(tenant: Path) -> None:
    new_token(tenant)
    config = MonitorConfig(Tenant(tenant), token_always=True)
    with TestClient(create_app(config)) as client:
        (tenant / TOKEN_FILE).unlink()
        assert client.get("/api/flows").status_code == 401
        assert client.get("/healthz").status_code == 200


def test_settings_keep_the_address_for_run(tenant: Path) -> None:
    shown = flowrt(tenant, "monitor", "settings")
    assert shown.exit_code == 0 and "http: (none" in shown.output
    assert flowrt(tenant, "monitor", "settings", "--http", "127.0.0.1:9999").exit_code == 0
    assert "http: 127.0.0.1:9999" in flowrt(tenant, "monitor", "settings").output
    bad = flowrt(tenant, "monitor", "settings", "--http", "nonsense")
    assert bad.exit_code == 2 and "is not HOST:PORT" in bad.output
    missing = flowrt(tenant, "monitor", "settings", "--tls-alias", "nope")
    assert missing.exit_code != 0 and "nope" in missing.output
    assert "http: 127.0.0.1:9999" in flowrt(tenant, "monitor", "settings").output
