"""Failures induced for real on loopback, seen through both paths: the flow (a receiver's
delivery, or a deployed flow's `flowrt run --once` then `flowrt status`) and `flowrt test`.

Servers here are the smallest that misbehave the way the issue describes: a listener that
never answers, an SMTP server that closes right after its greeting, one that offers AUTH
PLAIN and LOGIN only. Real Postfix and Dovecot (the shared fixtures) give the implicit-TLS
ports.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.errors import chain_levels, find_hint
from tests.servers import TestCA

Run = Callable[..., Result]


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """`flowrt run` configures structlog for its process (here: into CliRunner's stream);
    the tests after these must find it as it was."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def tenant(tmp_path: Path, test_ca: TestCA) -> Path:
    """A tenant trusting the test CA, with the credentials `smtp-out` and `box`."""
    root = tmp_path / "tenant"
    assert CliRunner().invoke(cli, ["--tenant", str(root), "init"]).exit_code == 0
    ca = tmp_path / "ca.pem"
    ca.write_bytes(test_ca.cert_pem)
    run = CliRunner().invoke(cli, ["--tenant", str(root), "keystore", "add", "test-root", str(ca)])
    assert run.exit_code == 0, run.output
    for name in ("smtp-out", "box"):
        args = ["--tenant", str(root), "credentials", "add", name, "--user", "u@example.com"]
        added = CliRunner().invoke(cli, [*args, "--password-stdin"], input="not-the-real-one")
        assert added.exit_code == 0, added.output
    return root


@pytest.fixture
def flowrt(tenant: Path) -> Run:
    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)

    return run


def error_json(result: Result) -> dict[str, Any]:
    """The error part of `flowrt test ... --format json`: chain, levels, hint."""
    document = json.loads(result.output)
    assert document["ok"] is False
    error: dict[str, Any] = document["error"]
    return error


def levels_of(exc: BaseException) -> list[tuple[str, str]]:
    return [(level.type, level.message) for level in chain_levels(exc)]


def json_levels(error: dict[str, Any]) -> list[tuple[str, str]]:
    return [(level["type"], level["message"]) for level in error["levels"]]


def hint_of(exc: BaseException) -> str:
    return find_hint(exc) or ""


LIBRARY_NAMES = (
    "CancelledError",
    "TimeoutError",
    "SMTPServerDisconnected",
    "SMTPConnectTimeoutError",
    "SMTPReadTimeoutError",
    "SMTPResponseException",
    "SMTPException",
    "Traceback",
    "Error(",
)


def assert_no_python(text: str) -> None:
    for name in LIBRARY_NAMES:
        assert name not in text, f"{name} in {text!r}"


# ----------------------------------------------------------------------------- servers


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections (the kernel does) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


class LineServer:
    """A tiny asyncio server in a thread: ``talk(reader, writer)`` per connection."""

    def __init__(self, talk: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> None:
        self._talk = talk
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._talk, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def start(self) -> LineServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _greet_and_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 mx.test.example ESMTP ready\r\n")
    await writer.drain()
    writer.close()


async def _auth_plain_login_only(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """An SMTP server whose AUTH offer is PLAIN and LOGIN (no CRAM-MD5); bounded dialogue."""
    writer.write(b"220 mx.test.example ESMTP ready\r\n")
    for _ in range(20):
        line = (await reader.readline()).strip().upper()
        if not line or line.startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            break
        if line.startswith((b"EHLO", b"HELO")):
            writer.write(b"250-mx.test.example\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
        elif line.startswith(b"AUTH"):
            writer.write(b"504 5.5.4 Unrecognized authentication type\r\n")
        elif line.startswith(b"RSET") or line.startswith(b"NOOP"):
            writer.write(b"250 ok\r\n")
        else:
            writer.write(b"502 5.5.2 Error: command not recognized\r\n")
        await writer.drain()
    writer.close()


@pytest.fixture
def greet_then_close() -> Iterator[int]:
    server = LineServer(_greet_and_close).start()
    try:
        yield server.port
    finally:
        server.stop()


@pytest.fixture
def plain_login_only() -> Iterator[int]:
    server = LineServer(_auth_plain_login_only).start()
    try:
        yield server.port
    finally:
        server.stop()
