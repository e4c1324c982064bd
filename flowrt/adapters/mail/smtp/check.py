"""``flowrt test smtp``: greeting, EHLO, STARTTLS or SMTPS, AUTH, and the addresses."""

from __future__ import annotations

import ssl

import aiosmtplib
from cryptography import x509

from flowrt.adapters.mail.check.common import (
    TlsFailed,
    connect_stage,
    failing,
    mail_login,
    refuse_plaintext,
    run_check,
    ssl_cause,
    starttls_missing,
    tls_stage,
)
from flowrt.adapters.mail.check.target import CheckOptions
from flowrt.adapters.mail.sasl import OAUTH2_MECHANISMS
from flowrt.adapters.mail.smtp.session import bearer_auth
from flowrt.adapters.mail.smtp.target import SmtpTarget
from flowrt.connectivity.chain import peer_chain
from flowrt.connectivity.report import ConnectivityReport
from flowrt.errors import AuthenticationFailedException, FlowrtError, MessagingException
from flowrt.net import ProxyRoute, connect
from flowrt.security import TenantSecurity, unverified_context


async def check(opts: CheckOptions, security: TenantSecurity, report: ConnectivityReport) -> None:
    async def session(context: ssl.SSLContext, route: ProxyRoute | None) -> None:
        await _session(opts, context, route, security, report)

    async def unverified_chain(route: ProxyRoute | None) -> list[x509.Certificate]:
        return await _fetch_chain(opts, route)

    await run_check(opts, security, report, session, unverified_chain)


async def _open(
    opts: CheckOptions,
    context: ssl.SSLContext,
    route: ProxyRoute | None,
    report: ConnectivityReport | None,
) -> aiosmtplib.SMTP:
    if report is not None:
        sock = await connect_stage(report, opts, route)
    else:
        sock = await connect(opts.host, opts.port, route=route, timeout=opts.timeout)
    client = aiosmtplib.SMTP(
        hostname=opts.host,  # for TLS: SNI and the certificate's name check
        sock=sock,
        timeout=opts.timeout,
        use_tls=opts.protection == "smtps",
        start_tls=False,
        tls_context=context,
    )
    try:
        greeting = await client.connect()
    except aiosmtplib.SMTPException as exc:
        cause = ssl_cause(exc)
        if cause is not None:
            raise TlsFailed(cause) from exc
        raise MessagingException(f"no SMTP greeting from {opts.host}:{opts.port}: {exc}") from exc
    if report is not None:
        report.stage("greeting", f"{greeting.code} {greeting.message}")
    return client


async def _starttls(client: aiosmtplib.SMTP, opts: CheckOptions, context: ssl.SSLContext) -> bool:
    """True when the link is encrypted afterwards."""
    if opts.protection == "smtps":
        return True
    if opts.protection == "off":
        return False
    if not client.supports_extension("starttls"):
        if opts.protection == "starttls-mandatory":
            raise starttls_missing(opts)
        return False
    try:
        await client.starttls(tls_context=context, server_hostname=opts.host)
    except (aiosmtplib.SMTPException, ssl.SSLError, ConnectionError) as exc:
        cause = ssl_cause(exc) or (exc if isinstance(exc, ConnectionError) else None)
        if cause is not None:
            raise TlsFailed(cause) from exc
        raise MessagingException(f"STARTTLS failed: {exc}") from exc
    await client.ehlo()
    return True


async def _session(
    opts: CheckOptions,
    context: ssl.SSLContext,
    route: ProxyRoute | None,
    security: TenantSecurity,
    report: ConnectivityReport,
) -> None:
    client = await _open(opts, context, route, report)
    try:
        await client.ehlo()
        report.stage("capabilities", " ".join(sorted(client.esmtp_extensions)).upper())
        encrypted = await _starttls(client, opts, context)
        transport = client.transport
        tls_stage(report, transport.get_extra_info("ssl_object") if transport else None, security)
        if encrypted and opts.protection.startswith("starttls"):
            report.stage("capabilities", " ".join(sorted(client.esmtp_extensions)).upper())
        if opts.auth != "none":
            await _authenticate(client, opts, security, encrypted, report)
        if opts.mail_from:
            await _addresses(client, opts, report)
    except FlowrtError as exc:
        if report.error is None:
            report.fail(report.stages[-1].name if report.stages else "smtp", exc)
        raise
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


async def _authenticate(
    client: aiosmtplib.SMTP,
    opts: CheckOptions,
    security: TenantSecurity,
    encrypted: bool,
    report: ConnectivityReport,
) -> None:
    assert opts.credential is not None
    try:
        refuse_plaintext(opts, encrypted)
    except MessagingException as refused:
        report.fail("auth", refused)
        raise
    if opts.auth == "oauth2":
        await _oauth2(client, opts, security, report)
        return
    login = security.user_credential(opts.credential)
    try:
        if opts.auth == "encrypted":
            response = await client.auth_crammd5(login.user, login.password.reveal())
        elif "plain" in client.server_auth_methods:
            response = await client.auth_plain(login.user, login.password.reveal())
        else:
            response = await client.auth_login(login.user, login.password.reveal())
    except aiosmtplib.SMTPAuthenticationError as exc:
        error = AuthenticationFailedException(
            f"{exc.code} {exc.message}",
            hint=f"the server refused user {login.user!r}: check credential {opts.credential!r}",
        )
        report.fail("auth", error)
        raise error from None
    except aiosmtplib.SMTPException as exc:
        error = AuthenticationFailedException(
            str(exc), hint=f"the server offers AUTH {' '.join(client.server_auth_methods) or '-'}"
        )
        report.fail("auth", error)
        raise error from None
    report.stage("auth", f"{response.code} {response.message} (user {login.user})")


async def _oauth2(
    client: aiosmtplib.SMTP,
    opts: CheckOptions,
    security: TenantSecurity,
    report: ConnectivityReport,
) -> None:
    """The receiver's own OAuth2 login (token request, mechanism choice, error hints)."""
    with failing(report, "auth"):
        login = mail_login(opts, security)
        offered = [m.upper() for m in client.server_auth_methods]
        mechanism = next((m for m in OAUTH2_MECHANISMS if m in offered), None)
        if mechanism is None:
            raise AuthenticationFailedException(
                f"{opts.host}:{opts.port} offers AUTH {' '.join(offered) or '-'}, neither "
                "OAUTHBEARER nor XOAUTH2",
                hint="this server does not take OAuth2 tokens for SMTP",
            )
        token, _ = await login.access_token()
        target = SmtpTarget(opts.host, opts.port, opts.protection, opts.timeout)
        try:
            await bearer_auth(client, login.user, token, target, mechanism)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise AuthenticationFailedException(
                f"{exc.code} {exc.message}", hint=login.hint_when_refused()
            ) from None
    report.stage("auth", f"{mechanism} as {login.user}")


async def _addresses(
    client: aiosmtplib.SMTP, opts: CheckOptions, report: ConnectivityReport
) -> None:
    assert opts.mail_from is not None
    try:
        response = await client.mail(opts.mail_from)
        report.stage("mail from", f"{opts.mail_from}: {response.code} {response.message}")
        for rcpt in opts.rcpt_to:
            response = await client.rcpt(rcpt)
            report.stage("rcpt to", f"{rcpt}: {response.code} {response.message}")
    except aiosmtplib.SMTPResponseException as exc:
        error = MessagingException(
            f"{exc.code} {exc.message}", hint="the server refuses this address"
        )
        report.fail("addresses", error)
        raise error from None
    finally:
        await client.rset()


async def _fetch_chain(opts: CheckOptions, route: ProxyRoute | None) -> list[x509.Certificate]:
    """A second connection without validation, only to read the server's chain."""
    client = await _open(opts, unverified_context(), route, None)
    try:
        await client.ehlo()
        if opts.protection.startswith("starttls") and client.supports_extension("starttls"):
            await client.starttls(tls_context=unverified_context(), server_hostname=opts.host)
        transport = client.transport
        return peer_chain(transport.get_extra_info("ssl_object") if transport else None)
    finally:
        client.close()
