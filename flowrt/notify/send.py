"""Sending through the tenant's notification server, with the receivers' own SMTP code: the
session (TLS from the tenant keystore, STARTTLS mandatory, no password in clear), the
transaction and their error chains. ``flowrt notify test`` and ``server set`` first run the
stages of ``flowrt test smtp`` (:mod:`flowrt.adapters.mail.smtp.check`)."""

from __future__ import annotations

from flowrt.adapters.mail.check.target import CheckOptions
from flowrt.adapters.mail.smtp import check as smtp_check
from flowrt.adapters.mail.smtp.session import Login, local_hostname, open_session
from flowrt.adapters.mail.smtp.target import SmtpTarget
from flowrt.adapters.mail.smtp.transaction import TransactionResult, send_transaction
from flowrt.connectivity.report import ConnectivityReport
from flowrt.errors import FlowrtError
from flowrt.notify.compose import build_mail, test_text
from flowrt.notify.config import NotifyServer
from flowrt.security import TenantSecurity

__all__ = ["check_server", "send_mail", "test_server"]


def _target(server: NotifyServer) -> SmtpTarget:
    return SmtpTarget(
        host=server.host,
        port=server.port,
        protection=server.protection,
        timeout=server.timeout,
        receiver="notify",
    )


def _login(server: NotifyServer, security: TenantSecurity) -> Login | None:
    if server.auth == "none" or server.credential is None:
        return None
    credential = security.user_credential(server.credential)
    return Login(
        method="encrypted" if server.auth == "encrypted" else "plain",
        credential=server.credential,
        user=credential.user,
        password=credential.password,
    )


async def send_mail(
    server: NotifyServer, security: TenantSecurity, recipient: str, data: bytes
) -> TransactionResult:
    """One mail to one recipient on a fresh session (alerts are rare: no pool to keep)."""
    session = await open_session(
        _target(server),
        tls=security.client_context,
        login=_login(server, security),
        local_hostname=await local_hostname(),
    )
    try:
        return await send_transaction(session, server.sender, [recipient], data)
    finally:
        await session.close()


def check_options(server: NotifyServer, *, to: str | None = None) -> CheckOptions:
    return CheckOptions(
        protocol="smtp",
        host=server.host,
        port=server.port,
        protection=server.protection,
        auth=server.auth,
        credential=server.credential,
        timeout=server.timeout,
        mail_from=server.sender,
        rcpt_to=(to,) if to else (),
    )


async def check_server(
    server: NotifyServer, security: TenantSecurity, report: ConnectivityReport
) -> None:
    """The stages of ``flowrt test smtp``: connect, TLS, chain, AUTH, MAIL FROM; raises the
    chain (with the ``--import`` hint for an untrusted chain) when one fails."""
    await smtp_check.check(check_options(server), security, report)


async def test_server(
    server: NotifyServer,
    security: TenantSecurity,
    report: ConnectivityReport,
    to: str,
    *,
    now: float,
) -> None:
    """The check's stages with ``to`` as recipient, then a real test mail to ``to``."""
    await smtp_check.check(check_options(server, to=to), security, report)
    subject, body = test_text(server, now)
    try:
        data = build_mail(server, to, subject, body, now=now)
        result = await send_mail(server, security, to, data)
    except FlowrtError as exc:
        report.fail("send", exc)
        raise
    report.stage("send", f"{to}: {result.data_reply}")
