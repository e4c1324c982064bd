"""A small OAuth 2.0 authorization server on 127.0.0.1 for tests (stdlib http.server in a
thread): it signs users in without asking (the "scripted browser" only follows its redirect),
issues access and refresh tokens, refreshes with rotation, and introspects tokens (RFC 7662)
for Dovecot's ``oauth2`` passdb.

Endpoints: ``GET /authorize`` (code + PKCE S256, 302 to the redirect URI), ``POST /token``
(authorization_code, refresh_token, client_credentials), ``POST /introspect``.

Knobs for tests: ``expires_in`` (access-token lifetime announced), ``rotate`` (a new refresh
token on every refresh), ``expire_access_tokens()`` (all issued tokens become inactive, as if
their hour had passed), ``revoke_refresh_tokens()``, ``mode`` (``ok``, ``html``, ``500``,
``no-access-token``, ``slow``) for a token endpoint that misbehaves, ``slow_seconds``.
``issued`` holds every token and code handed out, so tests can grep artifacts for them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["AuthorizationServer"]


@dataclasses.dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    user: str
    scope: str


class AuthorizationServer:
    host = "127.0.0.1"

    def __init__(self, *, clients: dict[str, str | None] | None = None) -> None:
        self.clients: dict[str, str | None] = (
            clients if clients is not None else {"flowrt-app": None}
        )
        self.sign_in_as = "plant@example.com"
        self.expires_in = 3600
        self.rotate = True
        self.mode = "ok"
        self.slow_seconds = 3.0
        self.issued: list[str] = []
        self.grants: list[str] = []  # grant_type of every token request, in order
        self.introspections = 0
        self._access: dict[str, tuple[str, bool]] = {}  # token -> (user, active)
        self._refresh: dict[str, str] = {}  # refresh token -> user
        self._codes: dict[str, _Code] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._authorize(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                path = urllib.parse.urlsplit(self.path).path
                if path == "/introspect":
                    owner._introspect(self, form)
                elif path == "/token":
                    owner._token(self, form)
                else:
                    _send(self, 404, {"error": "not_found"})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.base = f"http://{self.host}:{self.port}"
        self.authorize_url = f"{self.base}/authorize"
        self.token_url = f"{self.base}/token"
        self.introspection_url = f"{self.base}/introspect"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle

    def start(self) -> AuthorizationServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- test knobs

    def issue_refresh_token(self, user: str) -> str:
        """A refresh token as if ``user`` had signed in (for tests that skip the browser)."""
        token = self._new("rt")
        with self._lock:
            self._refresh[token] = user
        return token

    def expire_access_tokens(self) -> None:
        with self._lock:
            self._access = {t: (u, False) for t, (u, _) in self._access.items()}

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh.clear()

    def refresh_tokens(self) -> list[str]:
        with self._lock:
            return list(self._refresh)

    # -- endpoints

    def _new(self, prefix: str) -> str:
        token = f"{prefix}-{secrets.token_urlsafe(18)}"
        self.issued.append(token)
        return token

    def _authorize(self, request: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(request.path)
        q = dict(urllib.parse.parse_qsl(parts.query))
        if parts.path != "/authorize" or q.get("client_id") not in self.clients:
            _send(request, 400, {"error": "invalid_request"})
            return
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            _send(request, 400, {"error": "invalid_request"})
            return
        code = self._new("code")
        with self._lock:
            self._codes[code] = _Code(
                q["client_id"],
                q["redirect_uri"],
                q["code_challenge"],
                self.sign_in_as,
                q.get("scope", ""),
            )
        query = urllib.parse.urlencode({"code": code, "state": q.get("state", "")})
        request.send_response(302)
        request.send_header("Location", f"{q['redirect_uri']}?{query}")
        request.send_header("Content-Length", "0")
        request.end_headers()

    def _token(self, request: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        self.grants.append(form.get("grant_type", ""))
        if self.mode == "slow":
            time.sleep(self.slow_seconds)
        if self.mode == "html":
            body = b"<html><head><title>Sign in - Portal</title></head><body>login</body></html>"
            _send_raw(request, 200, "text/html; charset=utf-8", body)
            return
        if self.mode == "500":
            _send_raw(request, 500, "text/plain", b"Internal Server Error")
            return
        client = form.get("client_id", "")
        if client not in self.clients or self.clients[client] != form.get("client_secret"):
            _send(request, 401, {"error": "invalid_client", "error_description": "bad client"})
            return
        grant = form.get("grant_type")
        with self._lock:
            if grant == "authorization_code":
                user = self._redeem(form)
            elif grant == "refresh_token":
                user = self._refresh.get(form.get("refresh_token", ""))
                if user is not None and self.rotate:
                    del self._refresh[form["refresh_token"]]
            elif grant == "client_credentials":
                user = "client"
            else:
                _send(request, 400, {"error": "unsupported_grant_type"})
                return
        if user is None:
            _send(
                request,
                400,
                {"error": "invalid_grant", "error_description": "token expired or revoked"},
            )
            return
        if self.mode == "no-access-token":
            _send(request, 200, {"token_type": "Bearer", "expires_in": self.expires_in})
            return
        access = self._new("at")
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        with self._lock:
            self._access[access] = (user, True)
            if grant == "authorization_code" or (grant == "refresh_token" and self.rotate):
                rt = self._new("rt")
                self._refresh[rt] = user
                answer["refresh_token"] = rt
        _send(request, 200, answer)

    def _redeem(self, form: dict[str, str]) -> str | None:
        code = self._codes.pop(form.get("code", ""), None)
        if code is None or code.redirect_uri != form.get("redirect_uri"):
            return None
        verifier = form.get("code_verifier", "").encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if challenge.decode() != code.challenge or code.client_id != form.get("client_id"):
            return None
        return code.user

    def _introspect(self, request: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        self.introspections += 1
        with self._lock:
            user, active = self._access.get(form.get("token", ""), ("", False))
        _send(request, 200, {"active": active, "username": user} if active else {"active": False})


def _send(request: BaseHTTPRequestHandler, status: int, document: dict[str, Any]) -> None:
    _send_raw(request, status, "application/json", json.dumps(document).encode())


def _send_raw(request: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
    request.send_response(status)
    request.send_header("Content-Type", ctype)
    request.send_header("Content-Length", str(len(body)))
    request.send_header("Cache-Control", "no-store")
    request.end_headers()
    request.wfile.write(body)
