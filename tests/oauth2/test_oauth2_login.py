"""`flowrt credentials oauth2-login` end to end against the local authorization server, as a
subprocess on a headless machine; the "browser" is a script that opens the printed address
and follows (or, for --no-browser, copies) the redirect."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flowrt.adapters.mail.oauth2 import OAuth2Tokens
from flowrt.security import OAuth2RefreshToken
from flowrt.security.credentials import CredentialStore
from flowrt.tenant import Tenant
from tests.oauth2.conftest import (
    CLIENT_ID,
    files_containing,
    flowrt,
    no_display_env,
    security,
)
from tests.servers import AuthorizationServer


class Login:
    """``flowrt credentials oauth2-login`` running; ``address()`` waits for the printed URL."""

    def __init__(
        self, tenant: Path, auth: AuthorizationServer, *extra: str, client_id: str = CLIENT_ID
    ) -> None:
        self.proc = subprocess.Popen(
            [
                "flowrt",
                "--tenant",
                str(tenant),
                "credentials",
                "oauth2-login",
                "m365",
                "--provider",
                "custom",
                "--client-id",
                client_id,
                "--authorize-url",
                auth.authorize_url,
                "--token-url",
                auth.token_url,
                "--scope",
                "imap pop smtp offline_access",
                "--user",
                "plant@example.com",
                "--wait",
                "20s",
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=no_display_env(),
        )
        self.lines: list[str] = []

    def address(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            assert line, f"no address printed: {self.lines} {self.finish()}"
            self.lines.append(line)
            if line.strip().startswith("http"):
                return line.strip()
        raise AssertionError("no address printed in time")

    def finish(self, stdin: str | None = None) -> tuple[int, str]:
        # Not communicate(): it reads the raw pipe and would lose what readline() buffered.
        assert self.proc.stdin is not None and self.proc.stdout and self.proc.stderr
        if stdin is not None:
            self.proc.stdin.write(stdin)
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait(timeout=30)
        return self.proc.returncode, "".join(self.lines) + out + err


@pytest.fixture
def auth() -> Iterator[AuthorizationServer]:
    server = AuthorizationServer(clients={CLIENT_ID: None, "confidential": "app-s3cret"}).start()
    yield server
    server.stop()


def stored(tenant: Path) -> OAuth2RefreshToken:
    credential = CredentialStore.open(Tenant(tenant)).get("m365")
    assert isinstance(credential, OAuth2RefreshToken)
    return credential


def test_login_with_the_loopback_redirect_stores_a_working_refresh_token(
    tenant: Path, auth: AuthorizationServer
) -> None:
    login = Login(tenant, auth)
    address = login.address()
    assert address.startswith(f"{auth.authorize_url}?response_type=code&client_id={CLIENT_ID}")
    assert "code_challenge_method=S256" in address and "login_hint=plant%40example.com" in address
    # the scripted browser: open the address, follow the redirect to 127.0.0.1
    answer = httpx.get(address, follow_redirects=True, timeout=10)
    assert answer.status_code == 200 and "Signed in" in answer.text
    code, output = login.finish()
    assert code == 0, output
    assert (
        "added oauth2-refresh-token credential m365 (provider custom, user plant@example.com)"
        in output
    )
    credential = stored(tenant)
    assert credential.user == "plant@example.com" and credential.client_secret is None
    assert credential.refresh_token.reveal() in auth.refresh_tokens()

    # The credential works: an access token, with the refresh token rotated in the store.
    token, fresh = asyncio.run(
        OAuth2Tokens().get(
            credential, tls=security(tenant).client_context, timeout=5, store=security(tenant)
        )
    )
    assert fresh and token.reveal() in auth.issued
    assert stored(tenant).refresh_token != credential.refresh_token
    assert stored(tenant).rotated is not None

    shown = flowrt(tenant, "credentials", "show", "m365").output
    assert "kind: oauth2-refresh-token" in shown and "provider: custom" in shown
    assert not [s for s in auth.issued if s in output + shown]
    assert files_containing(tenant, auth.issued) == []


def test_no_browser_takes_the_pasted_address_and_a_client_secret(
    tenant: Path, auth: AuthorizationServer
) -> None:
    login = Login(tenant, auth, "--no-browser", "--client-secret-stdin", client_id="confidential")
    assert login.proc.stdin is not None
    login.proc.stdin.write("app-s3cret\n")
    login.proc.stdin.flush()
    address = login.address()
    # the browser is on another machine: the redirect to 127.0.0.1 fails there; its address
    # is copied from the address bar
    redirected = httpx.get(address, follow_redirects=False, timeout=10).headers["location"]
    assert redirected.startswith("http://127.0.0.1:")
    code, output = login.finish(redirected + "\n")
    assert code == 0, output
    assert "Paste that whole address here" in output
    credential = stored(tenant)
    assert credential.client_secret is not None
    assert credential.client_secret.reveal() == "app-s3cret"
    assert "app-s3cret" not in output
    assert files_containing(tenant, ["app-s3cret", *auth.issued]) == []


def test_a_refused_sign_in_stores_nothing(tenant: Path, auth: AuthorizationServer) -> None:
    login = Login(tenant, auth, "--no-browser")
    login.address()
    code, output = login.finish(
        "http://127.0.0.1:8400/?error=access_denied&error_description=The+user+said+no\n"
    )
    assert code == 1
    assert "error: the sign-in was refused: access_denied: The user said no" in output
    assert "m365" not in flowrt(tenant, "credentials", "list").output


def test_a_pasted_address_of_another_sign_in_is_refused(
    tenant: Path, auth: AuthorizationServer
) -> None:
    login = Login(tenant, auth, "--no-browser")
    login.address()
    code, output = login.finish("http://127.0.0.1:8400/?code=abc&state=forged\n")
    assert code == 1
    assert "does not belong to this sign-in" in output
    assert "m365" not in flowrt(tenant, "credentials", "list").output


def test_token_endpoint_failing_at_the_exchange_stores_nothing(
    tenant: Path, auth: AuthorizationServer
) -> None:
    auth.mode = "500"
    login = Login(tenant, auth)
    httpx.get(login.address(), follow_redirects=True, timeout=10)
    code, output = login.finish()
    assert code == 1
    assert (
        f"error: MessagingException: Could not get an OAuth2 token for credential m365 from "
        f"{auth.token_url}\n  nested exception is:\n\tIOException: HTTP 500 with text/plain "
        "('Internal Server Error') instead of JSON"
    ) in output
    assert "m365" not in flowrt(tenant, "credentials", "list").output


def test_bad_command_lines_fail_before_any_sign_in(tenant: Path) -> None:
    custom = flowrt(
        tenant, "credentials", "oauth2-login", "x", "--provider", "custom", "--client-id", "c"
    )
    assert custom.exit_code == 2
    assert "--provider custom needs --authorize-url, --token-url and --scope" in custom.output
    bad_url = flowrt(
        tenant,
        "credentials",
        "oauth2-login",
        "x",
        "--provider",
        "google",
        "--client-id",
        "c",
        "--token-url",
        "ftp://example.com/token",
    )
    assert (
        bad_url.exit_code == 2
        and "--token-url: 'ftp://example.com/token' is not an http(s) URL" in bad_url.output
    )
    assert (
        flowrt(
            tenant, "credentials", "add", "taken", "--password-stdin", "--user", "u", input="p"
        ).exit_code
        == 0
    )
    taken = flowrt(
        tenant,
        "credentials",
        "oauth2-login",
        "taken",
        "--provider",
        "microsoft",
        "--client-id",
        "c",
    )
    assert taken.exit_code == 1 and "already exists" in taken.output
    assert "http" not in taken.output  # no sign-in address was offered
