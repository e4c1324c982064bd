"""The runtime side of the on-premise set-up, end to end: a real ``flowrt connector run``
(a subprocess with a generated TOML and token) in front of the real Dovecot and Postfix,
and a tenant that reaches them through it with ``proxy on-premise location "plant-1"``.

* ``start_connector(mappings, ...)``: a connector process serving one location, listening
  on a port the kernel picks (read from its ``listening`` log line); stopped (SIGTERM, then
  kill) at the end of the test. Its JSON log is kept as ``connector.events``;
* ``onprem``: a tenant (``flowrt init``; the test root CA in the keystore; a fresh source
  and target mailbox with their credentials) driven through the CLI: ``onprem.cli(...)``
  (click's CliRunner), ``onprem.run_once()`` (``flowrt run --once`` as a subprocess),
  ``onprem.start_runtime()`` (``flowrt run`` in the background, stopped at the end of the
  test), ``onprem.write_flow(...)``, ``onprem.add_location(...)``, and readers for what a
  user looks at: ``failed_entry()`` (``flowrt mpl show``), ``status()`` (``flowrt status``),
  ``arrived()`` / ``source_seen()`` (the mailboxes, read with an independent IMAP client).

Every wait is bounded; a connector that does not come up fails the test with its log.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from tests.servers import DovecotServer, MailboxUser, PostfixServer, TestCA

LOCATION = "plant-1"
VHOST = "mail.plant.example"  # a name the test servers' certificate carries
TOKEN_ENV = "FLOWRT_CONNECTOR_TOKEN"
START_TIMEOUT = 15.0
RUN_TIMEOUT = 40.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def new_token() -> str:
    return "onprem-" + os.urandom(16).hex()


# ----------------------------------------------------------------------------- connector


def tcp(virtual: str, internal_port: int) -> dict[str, str]:
    return {"virtual": virtual, "internal": f"127.0.0.1:{internal_port}", "protocol": "tcp"}


def tcp_tls(virtual: str, internal_port: int, tls_name: str = VHOST) -> dict[str, str]:
    return {
        "virtual": virtual,
        "internal": f"127.0.0.1:{internal_port}",
        "protocol": "tcp-tls",
        "tls_name": tls_name,
    }


def _toml(value: str | int) -> str:
    return str(value) if isinstance(value, int) else json.dumps(value)


class Connector:
    """``flowrt connector run CONFIG.toml --log-format json`` in a subprocess."""

    def __init__(
        self,
        directory: Path,
        mappings: list[dict[str, str]],
        *,
        location: str = LOCATION,
        token: str | None = None,
        truststore: bytes | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.location = location
        self.token = token or new_token()
        self.config = directory / "connector.toml"
        lines = [
            f"location_id = {_toml(location)}",
            'listen = "127.0.0.1:0"',
            f"token_env = {_toml(TOKEN_ENV)}",
            'connect_timeout = "5s"',
            'handshake_timeout = "5s"',
        ]
        if truststore is not None:
            (directory / "truststore.pem").write_bytes(truststore)
            lines += ["[tls]", 'truststore = "truststore.pem"']
        for mapping in mappings:
            lines.append("[[mapping]]")
            lines += [f"{key} = {_toml(value)}" for key, value in mapping.items()]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.port = 0
        self.process = subprocess.Popen(
            ["flowrt", "connector", "run", str(self.config), "--log-format", "json"],
            env={**os.environ, TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(START_TIMEOUT):
            self.stop()
            pytest.fail("the connector did not start:\n" + self.log(), pytrace=False)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            if event.get("event") == "listening":
                self.port = int(str(event["address"]).rsplit(":", 1)[1])
                self._listening.set()

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_outcome(
        self, outcome: str, since: int = 0, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The connector's log line for a decision (it may come a moment after the reply),
        among the events from index ``since`` on."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event.get("outcome") == outcome:
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {outcome!r} in the connector log:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._reader.join(timeout=5)


StartConnector = Callable[..., Connector]


@pytest.fixture
def start_connector(tmp_path: Path) -> Iterator[StartConnector]:
    started: list[Connector] = []

    def start(mappings: list[dict[str, str]], **kwargs: Any) -> Connector:
        connector = Connector(tmp_path / f"connector-{len(started)}", mappings, **kwargs)
        started.append(connector)
        return connector

    yield start
    for connector in started:
        connector.stop()


# ----------------------------------------------------------------------------- tenant


@dataclasses.dataclass
class RunResult:
    """``flowrt run --once``: exit code and its JSON log (one event per line)."""

    code: int
    log: str

    def events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if parsed.get("event") == event:
                out.append(parsed)
        return out


class Runtime:
    """``flowrt run`` in a subprocess, as in production; its JSON log goes to a file."""

    def __init__(self, tenant: Path, log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            ["flowrt", "--tenant", str(tenant), "run", "--grace", "5s", "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        status = tenant / "runtime" / "status.json"
        deadline = time.monotonic() + START_TIMEOUT
        while not (status.exists() and str(self.process.pid) in status.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("flowrt run did not start:\n" + self.log(), pytrace=False)
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def events(self, event: str) -> list[dict[str, Any]]:
        return RunResult(0, self.log()).events(event)

    def wait_for_event(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not (found := self.events(event)):
            assert time.monotonic() < deadline, f"no {event!r} in the runtime log:\n{self.log()}"
            time.sleep(0.05)
        return found[0]

    def stop(self) -> int:
        """SIGTERM, and the exit code (killed after a bound)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=5)
        self._log.close()
        return code


@dataclasses.dataclass
class OnPrem:
    """A tenant for the runtime side, with a source and a target mailbox."""

    root: Path
    work: Path
    dovecot: DovecotServer
    postfix: PostfixServer
    source: MailboxUser
    target: MailboxUser
    runtimes: list[Runtime] = dataclasses.field(default_factory=list)

    def cli(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--tenant", str(self.root), *args], input=input)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self.cli(*args, input=input)
        assert result.exit_code == 0, f"flowrt {' '.join(args)}:\n{result.output}"
        return result.output

    def add_location(
        self, token: str, port: int, *, location: str = LOCATION, user: str | None = None
    ) -> None:
        """The location entry: the credential's user is the location ID, its password the
        connector's token (``user`` overrides the user, to test a mismatch)."""
        name = f"{location}-token"
        self.ok(
            "credentials",
            "add",
            name,
            "--user",
            user or location,
            "--password-stdin",
            "--replace",
            input=token,
        )
        self.ok(
            "locations",
            "add",
            location,
            "--proxy",
            f"127.0.0.1:{port}",
            "--credential",
            name,
            "--replace",
        )

    def write_flow(self, name: str, *, sender: str, receiver: str, on_error: str = "") -> Path:
        """A flow forwarding the source mailbox to the target; ``sender`` and ``receiver``
        hold the connection lines (address, protection, auth, proxy)."""
        path = self.work / f"{name}.flow"
        path.write_text(
            FLOW.format(
                name=name,
                sender=_indent(sender),
                receiver=_indent(receiver),
                target=self.target.address,
                on_error=f"    on-error {{\n        {on_error}\n    }}\n" if on_error else "",
            ),
            encoding="utf-8",
        )
        return path

    def run_once(self) -> RunResult:
        """``flowrt run --once`` in a subprocess, as cron would run it."""
        done = subprocess.run(
            ["flowrt", "--tenant", str(self.root), "run", "--once", "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return RunResult(done.returncode, done.stdout + done.stderr)

    def start_runtime(self) -> Runtime:
        """``flowrt run`` in a subprocess (stopped at the end of the test)."""
        runtime = Runtime(self.root, self.work / f"runtime-{len(self.runtimes)}.log")
        self.runtimes.append(runtime)
        return runtime

    def drop_mail(self, subject: str) -> str:
        """An invoice mail in the source mailbox's INBOX; returns its Message-ID."""
        message = EmailMessage()
        message["From"] = "Supplier Billing <billing@supplier.example>"
        message["To"] = self.source.address
        message["Subject"] = subject
        message_id = f"{time.monotonic_ns()}@supplier.example"
        message["Message-ID"] = f"<{message_id}>"
        message.set_content(f"{subject}: please find the amount below.\nEUR 1.250,00\n")
        self.dovecot.append(
            self.source.address, "INBOX", message.as_bytes(policy=email.policy.SMTP)
        )
        return message_id

    def source_seen(self) -> list[bool]:
        """Per mail in the source INBOX: was it marked read (the flow finished with it)?"""
        return [
            "\\Seen" in flags for _uid, flags, _raw in self.dovecot.messages(self.source.address)
        ]

    def arrived(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=email.policy.default)
            for _uid, _flags, raw in self.dovecot.messages(self.target.address)
        ]

    def failed_entry(self, status: str = "FAILED") -> tuple[str, str]:
        """The one entry of the MPL in ``status``: (message id, ``flowrt mpl show`` output)."""
        listing = json.loads(self.ok("mpl", "list", "--status", status, "--format", "json"))
        assert len(listing) == 1, listing
        message_id = str(listing[0]["message_id"])
        return message_id, self.ok("mpl", "show", message_id)

    def status(self) -> dict[str, Any]:
        flows = json.loads(self.ok("status", "--format", "json"))["flows"]
        assert len(flows) == 1, flows
        return dict(flows[0])


FLOW = """flow {name} {{
    sender mail {{
        protocol      imap
{sender}
        timeout       10s
        folder        "INBOX"
        selection     unread
        post-process  mark-read
        poll          every 5m
    }}

    pipeline {{
        filter  header.Subject matches "(?i)invoice"
        set     header "X-Forwarded-By" = "flowrt"
    }}

    receiver mail accounting {{
{receiver}
        timeout       10s
        from          "integration@example.com"
        to            "{target}"
        subject       "Fwd: ${{header.Subject}}"
        body          "${{body}}"
    }}
{on_error}}}
"""


def _indent(lines: str) -> str:
    return "\n".join(f"        {line.strip()}" for line in lines.strip().splitlines())


@pytest.fixture
def onprem(
    tmp_path: Path,
    test_ca: TestCA,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    new_mailbox_user: Callable[..., MailboxUser],
) -> Iterator[OnPrem]:
    work = tmp_path / "work"
    work.mkdir()
    tenant = OnPrem(
        tmp_path / "tenant",
        work,
        dovecot,
        postfix,
        source=new_mailbox_user(prefix="plant"),
        target=new_mailbox_user(prefix="accounting"),
    )
    tenant.ok("init")
    root = work / "root-ca.pem"
    root.write_bytes(test_ca.cert_pem)
    tenant.ok("keystore", "add", "test-root", str(root))
    for name, user in (("plant-mailbox", tenant.source), ("smtp-out", tenant.target)):
        tenant.ok(
            "credentials",
            "add",
            name,
            "--user",
            user.address,
            "--password-stdin",
            input=user.password,
        )
    yield tenant
    for runtime in tenant.runtimes:
        runtime.stop()
