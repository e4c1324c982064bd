"""Shared pytest fixtures.

Real servers on loopback (see tests/servers/):

* ``test_ca`` (session): the root ``TestCA`` ("flowrt Test Root CA") that clients trust;
  ``test_intermediate_ca`` signs the server certificates, so servers send leaf+intermediate;
* ``server_cert`` (session): the servers' certificate (localhost, 127.0.0.1, ::1,
  mail.test.example, mail.plant.example);
* ``dovecot`` (session): ``DovecotServer`` with users ``plant@example.com``,
  ``accounting@example.com``, ``archive@example.com`` (passwords in ``dovecot.users`` /
  ``dovecot.password(address)``; values in ``tests.servers.DEFAULT_USERS``);
* ``dovecot_no_tls`` (session): a Dovecot without TLS (no STARTTLS, no IMAPS/POP3S);
* ``postfix`` (session): ``PostfixServer`` delivering to ``dovecot`` by LMTP, SASL via Dovecot;
* ``dante`` (session): ``DanteServer`` passing only Dovecot's IMAP/IMAPS/POP3/POP3S ports and
  Postfix' SMTP/submission/SMTPS ports (anything else: "Connection not allowed by ruleset");
* ``mailbox_user`` / ``new_mailbox_user`` (function): a fresh, empty Dovecot user (also
  known to Postfix) so tests do not see each other's mail;
* ``scripted_smtp`` (function): factory for ``ScriptedSMTPServer``s, stopped after the test;
* ``smtp_sink`` (function): a running Postfix ``smtp-sink``.

A test whose server was stopped or killed by an earlier test gets it restarted (same
ports). A missing server binary fails the test with the Debian package to install; nothing is
skipped silently. Tests using these fixtures are marked ``servers`` automatically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.servers import (
    DanteServer,
    DovecotServer,
    MailboxUser,
    PostfixServer,
    ScriptedSMTPServer,
    ServerCert,
    ServerStartError,
    ServerUnavailable,
    SmtpSink,
    TestCA,
    proxied_destinations,
)

_SERVER_FIXTURES = frozenset(
    {
        "dovecot",
        "dovecot_no_tls",
        "postfix",
        "dante",
        "mailbox_user",
        "new_mailbox_user",
        "scripted_smtp",
        "smtp_sink",
    }
)
_RESTARTABLE = ("dovecot", "dovecot_no_tls", "postfix", "dante")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


def _start(factory: Callable[[], Any]) -> Any:
    try:
        return factory()
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    except ServerStartError as exc:
        pytest.fail(f"server did not start:\n{exc}", pytrace=False)


@pytest.fixture(autouse=True)
def _servers_running(request: pytest.FixtureRequest) -> None:
    """Restart a session server an earlier test stopped or killed (only if this test uses it)."""
    for name in _RESTARTABLE:
        if name in request.fixturenames:
            server = request.getfixturevalue(name)
            _start(server.ensure_running)


@pytest.fixture(scope="session")
def test_ca() -> TestCA:
    return TestCA("flowrt Test Root CA")


@pytest.fixture(scope="session")
def test_intermediate_ca(test_ca: TestCA) -> TestCA:
    return test_ca.new_intermediate("flowrt Test Intermediate CA")


@pytest.fixture(scope="session")
def server_cert(test_intermediate_ca: TestCA) -> ServerCert:
    return test_intermediate_ca.issue_server_cert()


@pytest.fixture(scope="session")
def dovecot(server_cert: ServerCert) -> Iterator[DovecotServer]:
    server: DovecotServer = _start(lambda: DovecotServer(cert=server_cert).start())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def dovecot_no_tls() -> Iterator[DovecotServer]:
    server: DovecotServer = _start(lambda: DovecotServer(tls=False).start())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postfix(dovecot: DovecotServer, server_cert: ServerCert) -> Iterator[PostfixServer]:
    dovecot.ensure_running()
    server: PostfixServer = _start(lambda: PostfixServer(dovecot, cert=server_cert).start())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def dante(dovecot: DovecotServer, postfix: PostfixServer) -> Iterator[DanteServer]:
    allow = proxied_destinations(dovecot, postfix)
    server: DanteServer = _start(lambda: DanteServer(allow_to=allow).start())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def new_mailbox_user(dovecot: DovecotServer) -> Callable[..., MailboxUser]:
    """Factory: ``new_mailbox_user(prefix="user", domain="example.com")`` -> fresh user."""
    return dovecot.new_user


@pytest.fixture
def mailbox_user(new_mailbox_user: Callable[..., MailboxUser]) -> MailboxUser:
    """A fresh, empty mailbox (address ``user-<random>@example.com``) with its password."""
    return new_mailbox_user()


@pytest.fixture
def scripted_smtp() -> Iterator[Callable[..., ScriptedSMTPServer]]:
    """Factory: ``scripted_smtp(greeting="421 ...")`` etc. (see ``Script``); started."""
    servers: list[ScriptedSMTPServer] = []

    def make(**script_fields: Any) -> ScriptedSMTPServer:
        server = ScriptedSMTPServer(**script_fields).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink: SmtpSink = _start(lambda: SmtpSink().start())
    try:
        yield sink
    finally:
        sink.close()
