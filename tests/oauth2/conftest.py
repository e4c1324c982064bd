"""Fixtures for OAuth2 against real servers: a local authorization server
(:class:`tests.servers.AuthorizationServer`) and, per bearer mechanism, a Dovecot whose
``oauth2`` passdb asks it about tokens, with a Postfix doing SMTP AUTH through that Dovecot.

``bearer_stack`` is parametrized: once with only XOAUTH2 offered, once with only OAUTHBEARER,
so every test using it proves both mechanisms on IMAP, POP3 and SMTP.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.security import (
    OAuth2RefreshToken,
    Secret,
    TenantSecurity,
    edit_credentials,
)
from flowrt.security.credentials import CredentialStore
from flowrt.tenant import Tenant
from tests.servers import (
    AuthorizationServer,
    DovecotServer,
    PostfixServer,
    ServerCert,
    ServerStartError,
    ServerUnavailable,
    TestCA,
)

CLIENT_ID = "flowrt-app"


@dataclasses.dataclass
class BearerStack:
    auth: AuthorizationServer
    dovecot: DovecotServer
    postfix: PostfixServer
    mechanism: str  # the one bearer mechanism this stack's servers offer


@pytest.fixture(scope="module")
def authorization_server() -> Iterator[AuthorizationServer]:
    server = AuthorizationServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_knobs(request: pytest.FixtureRequest) -> None:
    if "authorization_server" in request.fixturenames:
        server: AuthorizationServer = request.getfixturevalue("authorization_server")
        server.mode, server.expires_in, server.rotate = "ok", 3600, True
        server.sign_in_as = "plant@example.com"


@pytest.fixture(scope="module", params=["xoauth2", "oauthbearer"])
def bearer_stack(
    request: pytest.FixtureRequest,
    authorization_server: AuthorizationServer,
    server_cert: ServerCert,
) -> Iterator[BearerStack]:
    mechanism = str(request.param)
    try:
        dovecot = DovecotServer(
            cert=server_cert,
            oauth2_introspection_url=authorization_server.introspection_url,
            oauth2_mechanisms=(mechanism,),
        ).start()
        postfix = PostfixServer(dovecot, cert=server_cert).start()
    except (ServerUnavailable, ServerStartError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield BearerStack(authorization_server, dovecot, postfix, mechanism.upper())
    finally:
        postfix.close()
        dovecot.close()


def flowrt(tenant: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)


@pytest.fixture
def tenant(tmp_path: Path, test_ca: TestCA, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialized tenant that trusts the test CA."""
    monkeypatch.delenv("FLOWRT_MASTER_KEY", raising=False)
    monkeypatch.delenv("FLOWRT_HOME", raising=False)
    root = tmp_path / "tenant"
    assert flowrt(root, "init").exit_code == 0
    ca = tmp_path / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    assert flowrt(root, "keystore", "add", "test-root", str(ca)).exit_code == 0
    return root


def add_refresh_credential(
    tenant: Path,
    auth: AuthorizationServer,
    name: str,
    user: str,
    *,
    client_secret: str | None = None,
) -> str:
    """A refresh-token credential as `oauth2-login` leaves it; returns the refresh token."""
    refresh = auth.issue_refresh_token(user)
    with edit_credentials(Tenant(tenant)) as store:
        store.put(
            OAuth2RefreshToken(
                name,
                auth.token_url,
                CLIENT_ID,
                Secret(refresh),
                Secret(client_secret) if client_secret else None,
                "imap pop smtp",
                user,
                "custom",
                auth.authorize_url,
            ),
            replace=True,
        )
    return refresh


def stored_refresh_token(tenant: Path, name: str) -> str:
    credential = CredentialStore.open(Tenant(tenant)).get(name)
    assert isinstance(credential, OAuth2RefreshToken)
    return credential.refresh_token.reveal()


def security(tenant: Path) -> TenantSecurity:
    return TenantSecurity.open(Tenant(tenant))


def files_containing(root: Path, secrets: list[str]) -> list[str]:
    """Every file under ``root`` (binary or not) in which one of ``secrets`` appears."""
    found = []
    needles = [s.encode() for s in secrets if s]
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n.decode()}" for n in needles if n in data]
    return found


def no_display_env() -> dict[str, Any]:
    """The environment of a headless server: `oauth2-login` opens no browser."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "PYTHONUNBUFFERED": "1", "BROWSER": "false"}


Wait = Callable[[Callable[[], bool], float, str], None]
