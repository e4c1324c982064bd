"""``flowrt test smtp``: greeting, EHLO, STARTTLS or SMTPS, AUTH, and the addresses.

The stages run the receiver's own session steps (:mod:`flowrt.adapters.mail.smtp.session`)
and map failures with the same builders (:mod:`flowrt.adapters.mail.smtp.errors`), so a
failure reads the same in ``flowrt test`` as in a flow's MPL. Only a failed TLS handshake
takes the test's own way: the chain is fetched, shown and offered for ``--import``.
"""

from __future__ import annotations

import ssl
from typing import NoReturn

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
    tls_stage,
)
from flowrt.adapters.mail.check.target import CheckOptions
from flowrt.adapters.mail.sasl import OAUTH2_MECHANISMS
from flowrt.adapters.mail.smtp.errors import (
    all_recipients_refused,
    couldnt_connect,
    reply_text,
    sender_refused,
    starttls_missing,
    wire_errors,
)
from flowrt.adapters.mail.smtp.session import (
    Login,
    authenticate,
    bearer_auth,
    greet,
    hello,
    local_hostname,
)
from flowrt.adapters.mail.smtp.target import SmtpTarget
from flowrt.connectivity.chain import peer_chain
from flowrt.connectivity.report import ConnectivityReport
from flowrt.errors import (
    AuthenticationFailedException,
    FlowrtError,
    IOException,
    MessagingException,
)
from flowrt.net import ProxyRoute, connect
from flowrt.security import TenantSecurity, unverified_context


async def check(opts: CheckOptions, security: TenantSecurity, report: ConnectivityReport) -> None:
    async def session(context: ssl.SSLContext, route: ProxyRoute | None) -> None:
        await _session(opts, context, route, security, report)

    async def unverified_chain(route: ProxyRoute | None) -> list[x509.Certificate]:
        return await _fetch_chain(opts, route)

    await run_check(opts, security, report, session, unverified_chain)


def target_of(opts: CheckOptions, route: ProxyRoute | None) -> SmtpTarget:
    """The receiver's view of what the test reaches, for the shared error wording."""
    return SmtpTarget(opts.host, opts.port, opts.protection, opts.timeout, route)


async def _raise_tls_failed(
    target: SmtpTarget, exc: ssl.SSLError | ConnectionError, local_hostname: str
) -> NoReturn:
    raise TlsFailed(exc)


async def _open(
    opts: CheckOptions,
    context: ssl.SSLContext,
    route: ProxyRoute | None,
    report: ConnectivityReport | None,
) -> tuple[aiosmtplib.SMTP, str]:
    """The client, greeted; and the greeting."""
    target = target_of(opts, route)
    if report is not None:

        def failure(exc: FlowrtError) -> MessagingException:
            error: MessagingException = (
                couldnt_connect(target, exc)
                if isinstance(exc, IOException)
                else MessagingException(
                    f"Could not connect to SMTP host: {opts.host}, port: {opts.port}"
                )
            )
            error.__cause__ = exc
            return error

        sock = await connect_stage(report, opts, route, failure=failure)
    else:
        sock = await connect(opts.host, opts.port, route=route, timeout=opts.timeout)
    client = aiosmtplib.SMTP(
        hostname=opts.host,  # for TLS: SNI and the certificate's name check
        sock=sock,
        timeout=opts.timeout,
        use_tls=opts.protection == "smtps",
        start_tls=False,
        tls_context=context,
        local_hostname=await local_hostname(),
    )
    try:
        greeting = await greet(client, target, "", tls_failed=_raise_tls_failed)
    except FlowrtError as exc:
        client.close()
        if report is not None:
            report.fail("greeting", exc)
        raise
    except BaseException:
        client.close()
        raise
    if report is not None:
        report.stage("greeting", greeting)
    return client, greeting


async def _starttls(
    client: aiosmtplib.SMTP, target: SmtpTarget, context: ssl.SSLContext, greeting: str
) -> bool:
    """True when the link is encrypted afterwards."""
    if target.protection == "smtps":
        return True
    if target.protection == "off":
        return False
    if not client.supports_extension("starttls"):
        if target.protection == "starttls-mandatory":
            raise starttls_missing(target)
        return False
    try:
        with wire_errors(target, "STARTTLS", greeting=greeting):
            await client.starttls(tls_context=context, server_hostname=target.host)
    except (aiosmtplib.SMTPException, ssl.SSLError, ConnectionError) as exc:
        cause = ssl_cause(exc) or (exc if isinstance(exc, ConnectionError) else None)
        if cause is not None:
            raise TlsFailed(cause) from exc
        raise MessagingException(f"STARTTLS failed: {exc}") from exc
    with wire_errors(target, "EHLO after STARTTLS"):
        await hello(client, target)
    return True


async def _session(
    opts: CheckOptions,
    context: ssl.SSLContext,
    route: ProxyRoute | None,
    security: TenantSecurity,
    report: ConnectivityReport,
) -> None:
    target = target_of(opts, route)
    client, greeting = await _open(opts, context, route, report)
    try:
        with wire_errors(target, "EHLO", greeting=greeting):
            await hello(client, target)
        report.stage("capabilities", " ".join(sorted(client.esmtp_extensions)).upper())
        encrypted = await _starttls(client, target, context, greeting)
        transport = client.transport
        tls_stage(report, transport.get_extra_info("ssl_object") if transport else None, security)
        if encrypted and opts.protection.startswith("starttls"):
            report.stage("capabilities", " ".join(sorted(client.esmtp_extensions)).upper())
        if opts.auth != "none":
            await _authenticate(client, opts, target, security, encrypted, report)
        if opts.mail_from:
            await _addresses(client, opts, target, report)
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
    target: SmtpTarget,
    security: TenantSecurity,
    encrypted: bool,
    report: ConnectivityReport,
) -> None:
    """As the flow logs in: the mechanism is chosen from the server's AUTH offer first."""
    assert opts.credential is not None
    if opts.auth == "oauth2":
        await _oauth2(client, opts, security, report)
        return
    credential = security.user_credential(opts.credential)
    try:
        refuse_plaintext(opts, encrypted)
        login = Login(
            method="encrypted" if opts.auth == "encrypted" else "plain",
            credential=opts.credential,
            user=credential.user,
            password=credential.password,
            allow_plaintext=opts.allow_plaintext_auth,
        )
        reply = await authenticate(client, target, login, encrypted=encrypted)
    except FlowrtError as exc:
        report.fail("auth", exc)
        raise
    report.stage("auth", f"{reply} (user {credential.user})")


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
    client: aiosmtplib.SMTP, opts: CheckOptions, target: SmtpTarget, report: ConnectivityReport
) -> None:
    assert opts.mail_from is not None
    try:
        try:
            with wire_errors(target, "MAIL FROM"):
                response = await client.mail(opts.mail_from)
        except aiosmtplib.SMTPResponseException as exc:
            raise sender_refused(
                opts.mail_from, list(opts.rcpt_to), exc.code, exc.message
            ) from None
        report.stage("mail from", f"{opts.mail_from}: {response.code} {response.message}")
        for rcpt in opts.rcpt_to:
            try:
                with wire_errors(target, "RCPT TO"):
                    response = await client.rcpt(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                reply = reply_text(exc.code, exc.message)
                raise all_recipients_refused({rcpt: reply}, {rcpt: exc.code}) from None
            report.stage("rcpt to", f"{rcpt}: {response.code} {response.message}")
    except FlowrtError as exc:
        report.fail("addresses", exc)
        raise
    finally:
        if client.is_connected:
            try:
                await client.rset()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def _fetch_chain(opts: CheckOptions, route: ProxyRoute | None) -> list[x509.Certificate]:
    """A second connection without validation, only to read the server's chain."""
    client, _ = await _open(opts, unverified_context(), route, None)
    try:
        await client.ehlo()
        if opts.protection.startswith("starttls") and client.supports_extension("starttls"):
            await client.starttls(tls_context=unverified_context(), server_hostname=opts.host)
        transport = client.transport
        return peer_chain(transport.get_extra_info("ssl_object") if transport else None)
    finally:
        client.close()
