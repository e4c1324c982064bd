"""auth plain takes AUTH LOGIN when the server has no AUTH PLAIN; names what is missing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import MessagingException, find_hint
from tests.servers import free_port
from tests.smtp.conftest import PASSWORD, USER, TestTenant, make_receiver


class _Handler:
    def __init__(self) -> None:
        self.logins: list[tuple[str, str]] = []  # (mechanism, user)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


def _server(exclude: list[str]) -> tuple[Controller, _Handler]:
    handler = _Handler()

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        handler.logins.append((mechanism, data.login.decode()))
        ok = (data.login.decode(), data.password.decode()) == (USER, PASSWORD)
        return AuthResult(success=ok)

    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_require_tls=False,
        auth_exclude_mechanism=exclude,
    )
    controller.start()
    return controller, handler


@pytest.fixture
def login_only() -> Iterator[tuple[int, _Handler]]:
    controller, handler = _server(["PLAIN"])
    yield controller.port, handler
    controller.stop()


@pytest.fixture
def no_cram() -> Iterator[int]:
    controller, _ = _server(["CRAM-MD5"])
    yield controller.port
    controller.stop()


def mail() -> Exchange:
    return Exchange(body=b"login\n", headers=Headers([("Subject", "LOGIN")]))


async def test_plain_falls_back_to_auth_login(
    tenant: TestTenant, login_only: tuple[int, _Handler]
) -> None:
    port, handler = login_only
    receiver = make_receiver(
        address=f'"127.0.0.1:{port}"', protection="off", allow_plaintext_auth=""
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        await smtp.deliver(mail())
    assert handler.logins == [("LOGIN", USER)]


async def test_encrypted_without_cram_md5_names_what_the_server_offers(
    tenant: TestTenant, no_cram: int
) -> None:
    receiver = make_receiver(
        address=f'"127.0.0.1:{no_cram}"', protection="off", auth='encrypted credential "smtp-out"'
    )
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        with pytest.raises(MessagingException) as info:
            await smtp.deliver(mail())
    assert info.value.message == (
        f"auth encrypted needs AUTH CRAM-MD5, but 127.0.0.1:{no_cram} offers AUTH LOGIN PLAIN"
    )
    assert "use auth plain over TLS" in (find_hint(info.value) or "")
