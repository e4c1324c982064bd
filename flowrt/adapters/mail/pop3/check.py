"""``flowrt test pop3``: greeting, CAPA, STLS or POP3S, login, the mailbox's count (STAT), and
QUIT. Nothing is deleted: no DELE is ever sent, so QUIT has nothing to apply.

The protocol is the sender's own client (:class:`~flowrt.adapters.mail.pop3.client.Pop3Client`)
and the login is the sender's own code, so that the test fails where a flow would.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from flowrt.adapters.mail.check.common import (
    check_mailbox_server,
    connect_stage,
    failing,
    mail_endpoint,
    refuse_plaintext,
    start_client,
    starttls,
    tls_stage,
)
from flowrt.adapters.mail.check.target import CheckOptions
from flowrt.adapters.mail.pop3 import errors
from flowrt.adapters.mail.pop3.client import Pop3Client
from flowrt.adapters.mail.pop3.errors import Pop3ErrorReply

# The sender's login (USER/PASS, AUTH PLAIN, CRAM-MD5 or APOP, and its error mapping),
# reused as it is rather than written twice.
from flowrt.adapters.mail.pop3.session import authenticate
from flowrt.adapters.mail.sasl import oauth2_mechanism
from flowrt.adapters.mail.sender.endpoint import MailLogin
from flowrt.connectivity.chain import peer_chain
from flowrt.connectivity.report import ConnectivityReport
from flowrt.net import ProxyRoute, connect
from flowrt.security import TenantSecurity, unverified_context


async def check(opts: CheckOptions, security: TenantSecurity, report: ConnectivityReport) -> None:
    await check_mailbox_server(opts, security, report, _session, _fetch_chain)


async def _start(
    opts: CheckOptions,
    sock: socket.socket,
    tls: ssl.SSLContext | None,
    route: ProxyRoute | None = None,
) -> Pop3Client:
    """The client over ``sock`` (implicit TLS first with ``tls``), greeting read."""
    try:
        return await start_client(Pop3Client.start, opts, sock, tls, route)
    except Pop3ErrorReply as exc:
        raise errors.not_a_greeting(exc.reply, opts.host, opts.port) from None


async def _session(
    opts: CheckOptions,
    context: ssl.SSLContext,
    route: ProxyRoute | None,
    security: TenantSecurity,
    report: ConnectivityReport,
    login: MailLogin | None,
) -> None:
    implicit = opts.protection == "pop3s"
    sock = await connect_stage(report, opts, route)
    with failing(report, "greeting", connecting=opts):
        client = await _start(opts, sock, context if implicit else None, route)
    try:
        if implicit:
            tls_stage(report, client.ssl_object(), security)
        report.stage("greeting", client.greeting)
        with failing(report, "capabilities", connecting=opts):
            await client.capa()
        report.stage("capabilities", _capabilities(client))
        with failing(report, "starttls", connecting=opts):
            encrypted = await _stls(client, opts, context)
        if encrypted and not implicit:
            tls_stage(report, client.ssl_object(), security)
            report.stage("capabilities", _capabilities(client))
        if login is not None:
            with failing(report, "auth", connecting=opts):
                refuse_plaintext(opts, encrypted)
                how = _mechanism(client, opts)
                await authenticate(client, mail_endpoint(opts, login, context, route))
            report.stage("auth", f"{how} as {login.user}")
            if opts.check_mailbox:
                with failing(report, "mailbox"):
                    total, size = await client.stat()
                report.results["mailbox"] = {"folder": "INBOX", "total": total, "size": size}
                report.stage(
                    "mailbox", f"{total} message(s), {size} octets (STAT; nothing deleted)"
                )
        with failing(report, "logout"):
            await client.quit()
        report.stage("logout", "QUIT")
    finally:
        await client.close()


def _capabilities(client: Pop3Client) -> str:
    if not client.capabilities:
        return "(no CAPA)"
    return " ".join(
        f"{name}({' '.join(args)})" if args else name
        for name, args in sorted(client.capabilities.items())
    )


async def _stls(client: Pop3Client, opts: CheckOptions, context: ssl.SSLContext) -> bool:
    """True when the link is encrypted afterwards."""
    try:
        return await starttls(opts, "STLS", client.has("STLS"), lambda: client.stls(context))
    except Pop3ErrorReply as exc:
        raise errors.stls_refused(exc.reply) from None


def _mechanism(client: Pop3Client, opts: CheckOptions) -> str:
    """What the sender's login will say (for the stage line only)."""
    if opts.auth == "encrypted":
        return "AUTH CRAM-MD5" if client.sasl("CRAM-MD5") else "APOP"
    if opts.auth == "oauth2":
        return f"AUTH {oauth2_mechanism(client.sasl) or 'XOAUTH2'}"
    if client.capabilities and not client.has("USER") and client.sasl("PLAIN"):
        return "AUTH PLAIN"
    return "USER/PASS"


async def _fetch_chain(opts: CheckOptions, route: ProxyRoute | None) -> list[x509.Certificate]:
    """A second connection without validation, only to read the server's chain."""
    implicit = opts.protection == "pop3s"
    context = unverified_context()
    sock = await connect(opts.host, opts.port, route=route, timeout=opts.timeout)
    client = await Pop3Client.start(
        sock,
        host=opts.host,
        port=opts.port,
        timeout=opts.timeout,
        tls=context if implicit else None,
    )
    try:
        if not implicit:
            await client.stls(context)
        return peer_chain(client.ssl_object())
    finally:
        await client.close()
