"""The authorization-code flow with PKCE for native apps (RFC 6749 4.1, RFC 7636, RFC 8252):
the address to open in a browser, and the loopback listener on 127.0.0.1 that the identity
provider redirects the browser to with the code.

Without a browser on this machine (``--no-browser``), the user opens the address elsewhere;
the redirect to 127.0.0.1 then fails in that browser, and the address it shows is pasted
back (:func:`code_from_redirect` reads it the same way).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import secrets
import urllib.parse

from flowrt.errors import AuthenticationFailedException, UsageError

_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>flowrt</title></head>"
    "<body><p>{text}</p></body></html>"
)


@dataclasses.dataclass(frozen=True)
class Authorization:
    """One sign-in: the address to open and what the answer must match."""

    url: str
    redirect_uri: str
    state: str
    verifier: str  # the PKCE code verifier: secret until the code is exchanged


def authorization(
    authorize_url: str,
    *,
    client_id: str,
    scope: str,
    redirect_uri: str,
    user: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> Authorization:
    verifier = secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43..128
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_urlsafe(16)
    params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", scope),
        ("state", state),
        ("code_challenge", challenge.rstrip(b"=").decode("ascii")),
        ("code_challenge_method", "S256"),
        *extra,
    ]
    if user:
        params.append(("login_hint", user))
    parts = urllib.parse.urlsplit(authorize_url)
    query = "&".join(q for q in (parts.query, urllib.parse.urlencode(params)) if q)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return Authorization(url, redirect_uri, state, verifier)


def code_from_redirect(answer: str, state: str) -> str:
    """The code from the redirected address (or only its query); the state must match."""
    text = answer.strip()
    query = urllib.parse.urlsplit(text).query if "://" in text else text.lstrip("?")
    fields = dict(urllib.parse.parse_qsl(query))
    if "error" in fields:
        said = f"{fields['error']}: {fields.get('error_description', '')}".strip(": ")
        raise AuthenticationFailedException(
            f"the sign-in was refused: {' '.join(said.split())[:300]}",
            hint="sign in with an account that may use this app (an administrator may have "
            "to grant consent first), then run the command again",
        )
    if fields.get("state") != state:
        raise AuthenticationFailedException(
            "the redirected address does not belong to this sign-in (its state differs)",
            hint="paste the address of the browser tab this command's link opened, or run "
            "the command again",
        )
    code = fields.get("code")
    if not code:
        raise UsageError(
            "the redirected address has no code= in it",
            hint="paste the whole address the browser shows after the sign-in (it starts "
            "with http://127.0.0.1)",
        )
    return code


class LoopbackReceiver:
    """A one-shot HTTP listener on 127.0.0.1 that takes the redirect with the code."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._answer: asyncio.Future[str] | None = None
        self.port = 0

    async def start(self, port: int = 0) -> str:
        """Listen; the redirect URI (``http://127.0.0.1:PORT/``)."""
        self._answer = asyncio.get_running_loop().create_future()
        try:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on 127.0.0.1:{port} for the sign-in: {exc.strerror}",
                hint="choose another --port, or 0 for any free one",
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        return f"http://127.0.0.1:{self.port}/"

    async def wait(self, timeout: float) -> str:
        """The query of the first request that carries a code or an error."""
        assert self._answer is not None
        try:
            async with asyncio.timeout(timeout):
                return await self._answer
        except TimeoutError:
            raise AuthenticationFailedException(
                f"no sign-in arrived on 127.0.0.1:{self.port} within {timeout:g}s",
                hint="open the address shown and finish the sign-in in the browser; on a "
                "machine without a browser use --no-browser and paste the redirected address",
            ) from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
        target = line[1] if len(line) >= 2 else ""
        query = urllib.parse.urlsplit(target).query
        fields = dict(urllib.parse.parse_qsl(query))
        if line and line[0] == "GET" and ("code" in fields or "error" in fields):
            text = "Signed in: flowrt has the answer. You can close this window."
            if "error" in fields:
                text = "The sign-in was refused; flowrt shows why."
            status = "200 OK"
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(query)
        else:  # favicon.ico and other stray requests
            status, text = "404 Not Found", "flowrt waits for the sign-in redirect here."
        body = _PAGE.format(text=text).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()
