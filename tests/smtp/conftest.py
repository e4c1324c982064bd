"""Fixtures for the SMTP receiver tests, beside the shared ones in ``tests/conftest.py``
(``postfix``, ``dovecot``, ``dante``, ``test_ca``, ``server_cert``, ``new_mailbox_user``).

Local to this directory, because nothing shared had them:

* tenants built with the security package's own API (``tenant`` trusts the test root CA,
  ``bare_tenant`` trusts nothing), and ``make_receiver`` for a receiver block in the DSL;
* ``scripted``: like the shared ``scripted_smtp``, but also takes a prepared server, such as
  :class:`DropOnceServer` (drops during the first DATA only);
* an XOAUTH2 SMTP server (aiosmtpd has no XOAUTH2 mechanism) and a tiny OAuth2 token endpoint;
* ``flowrt_logs``: every structlog event of the test.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from flowrt.adapters.mail.model import Receiver
from flowrt.dsl import parse_text
from flowrt.security import (
    Location,
    OAuth2ClientCredentials,
    Secret,
    TenantSecurity,
    UserCredential,
    edit_credentials,
    edit_keystore,
    edit_locations,
)
from flowrt.security import tls as tls_module
from flowrt.security.setup import init_tenant
from flowrt.tenant import Tenant
from tests.servers import (
    ReceivedMessage,
    Script,
    ScriptedSMTPServer,
    ServerCert,
    TestCA,
    free_port,
)

USER = "plant@example.com"
PASSWORD = "plant-secret"  # Dovecot's default test user; must never appear in any output
CLIENT_SECRET = "client-s3cr3t-value"
TOKEN_PREFIX = "ya29.test-token-"


# ----------------------------------------------------------------------------- tenants


@dataclasses.dataclass
class TestTenant:
    """A tenant in a temporary directory, changed through the security package's API."""

    __test__ = False
    tenant: Tenant
    security: TenantSecurity

    def trust(self, alias: str, ca: TestCA) -> None:
        with edit_keystore(self.tenant) as keystore:
            keystore.add_certificates(alias, [ca.certificate])

    def add_user(self, name: str, user: str, password: str) -> None:
        with edit_credentials(self.tenant) as store:
            store.put(UserCredential(name, user, Secret(password)), replace=True)

    def add_oauth2(self, name: str, token_url: str, *, scope: str | None = "smtp") -> None:
        with edit_credentials(self.tenant) as store:
            credential = OAuth2ClientCredentials(
                name, token_url, "flowrt-client", Secret(CLIENT_SECRET), scope
            )
            store.put(credential, replace=True)

    def add_location(self, location_id: str, host: str, port: int) -> None:
        with edit_locations(self.tenant) as locations:
            locations.add(Location(location_id, host, port), replace=True)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("FLOWRT_MASTER_KEY", raising=False)
    monkeypatch.delenv("FLOWRT_HOME", raising=False)
    tls_module.clear_cache()
    yield
    tls_module.clear_cache()


@pytest.fixture
def bare_tenant_factory(tmp_path: Path) -> Callable[[], TestTenant]:
    """New tenants with the credential ``smtp-out`` and an empty keystore (trusts nothing)."""
    count = 0

    def make() -> TestTenant:
        nonlocal count
        count += 1
        root = tmp_path / f"tenant-{count}"
        init_tenant(root, environ={})
        tenant = Tenant(root)
        made = TestTenant(tenant, TenantSecurity.open(tenant))
        made.add_user("smtp-out", USER, PASSWORD)
        return made

    return make


@pytest.fixture
def bare_tenant(bare_tenant_factory: Callable[[], TestTenant]) -> TestTenant:
    return bare_tenant_factory()


@pytest.fixture
def tenant(bare_tenant: TestTenant, test_ca: TestCA) -> TestTenant:
    """``bare_tenant`` with the test root CA in its keystore."""
    bare_tenant.trust("test-root", test_ca)
    return bare_tenant


# ----------------------------------------------------------------------------- flows


def make_receiver(**settings: str) -> Receiver:
    """A ``receiver mail out`` block from DSL values, e.g. ``protection="smtps"``.

    Keys are setting names with ``-`` written as ``_`` (``from_`` for ``from``); a value of
    ``""`` writes the bare keyword (``allow_plaintext_auth=""``).
    """
    defaults = {
        "protection": "starttls-mandatory",
        "auth": 'plain credential "smtp-out"',
        "from": f'"{USER}"',
        "to": '"accounting@example.com"',
        "subject": '"Invoice ${header.Subject}"',
        "body": '"${body}"',
        "timeout": "10s",
    }
    given = {k.rstrip("_").replace("_", "-"): v for k, v in settings.items()}
    lines = [f"    {k} {v}".rstrip() for k, v in {**defaults, **given}.items()]
    text = (
        "flow smtp-test {\n"
        '  sender mail {\n    protocol imap\n    address "127.0.0.1:143"\n'
        '    auth plain credential "x"\n  }\n'
        "  receiver mail out {\n" + "\n".join(lines) + "\n  }\n}\n"
    )
    result = parse_text(text, "smtp-test.flow")
    assert result.ok, result.render()
    return result.flows[0].receivers[0]


# ----------------------------------------------------------------------------- scripted


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedSMTPServer]]:
    """Start scripted aiosmtpd servers: ``scripted(rcpt_replies={...})``; stopped after."""
    servers: list[ScriptedSMTPServer] = []

    def start(server: ScriptedSMTPServer | None = None, **fields: Any) -> ScriptedSMTPServer:
        server = server or ScriptedSMTPServer(**fields)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


class DropOnceServer(ScriptedSMTPServer):
    """Drops the connection during the first DATA only; later connections behave."""

    def _record(self, message: ReceivedMessage) -> None:
        super()._record(message)
        if message.dropped:
            # The current connection keeps its handler (and drops); new ones get this script.
            self.script = dataclasses.replace(self.script, drop_during_data=False)


def drop_once_server(**fields: Any) -> DropOnceServer:
    return DropOnceServer(Script(drop_during_data=True, **fields))


# ----------------------------------------------------------------------------- XOAUTH2


class _XOAuth2Handler:
    def __init__(self, owner: XOAuth2Server) -> None:
        self.owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        assert isinstance(data, bytes)
        login = session.login_data
        self.owner.received.append(
            (login.decode() if isinstance(login, bytes) else str(login), data)
        )
        return "250 2.0.0 OK"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = args[1] if len(args) > 1 else ""
        text = base64.b64decode(blob).decode(errors="replace")
        fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part)
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        self.owner.attempts.append((user, token))
        if token in self.owner.valid_tokens:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        # RFC 7628 style: an error challenge, the client's empty answer, then 535.
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "smtp"})
        await server.challenge_auth(error)
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )


class XOAuth2Server:
    """aiosmtpd with STARTTLS and an XOAUTH2 mechanism accepting ``valid_tokens``."""

    def __init__(self, cert: ServerCert) -> None:
        self.valid_tokens: set[str] = set()
        self.attempts: list[tuple[str, str]] = []
        self.received: list[tuple[str, bytes]] = []
        self.port = free_port()
        self.controller = Controller(
            _XOAuth2Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=cert.server_context(),
            require_starttls=True,
            auth_required=True,
            auth_exclude_mechanism=["PLAIN", "LOGIN"],
        )

    def start(self) -> XOAuth2Server:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def xoauth2_server(server_cert: ServerCert) -> Iterator[XOAuth2Server]:
    server = XOAuth2Server(server_cert).start()
    yield server
    server.stop()


class TokenEndpoint:
    """A tiny OAuth2 token endpoint (client-credentials grant) on 127.0.0.1; HTTPS with
    ``cert``."""

    def __init__(self, cert: ServerCert | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        self.expires_in: int | None = 3600
        self.status = 200
        self.error: dict[str, str] | None = None
        self.on_token: Callable[[str], None] = lambda token: None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                owner.requests.append(form)
                if owner.status != 200 or form.get("client_secret") != CLIENT_SECRET:
                    status = owner.status if owner.status != 200 else 401
                    body = owner.error or {
                        "error": "invalid_client",
                        "error_description": "client authentication failed",
                    }
                else:
                    status = 200
                    token = f"{TOKEN_PREFIX}{len(owner.requests)}"
                    owner.on_token(token)
                    body = {"access_token": token, "token_type": "Bearer"}
                    if owner.expires_in is not None:
                        body["expires_in"] = owner.expires_in  # type: ignore[assignment]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if cert is not None:
            context = cert.server_context()
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        port = self.server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{port}/oauth2/v2.0/token"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> TokenEndpoint:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint().start()
    yield endpoint
    endpoint.stop()


# ----------------------------------------------------------------------------- logs


@pytest.fixture
def flowrt_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event flowrt emits during the test, rendered or not."""
    with structlog.testing.capture_logs() as logs:
        yield logs
