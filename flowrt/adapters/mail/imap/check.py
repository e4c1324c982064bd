"""``flowrt test imap``: greeting, capabilities, STARTTLS or IMAPS, login, then the folder
list or one mailbox's counts, and LOGOUT.

The protocol is the sender's own client (:class:`~flowrt.adapters.mail.imap.client.ImapClient`)
and the login is the sender's own code, so that the test fails where a flow would and says
the same. Nothing in the mailbox is changed: counts come from STATUS, which selects nothing.
"""

from __future__ import annotations

import asyncio
import re
import ssl

from aioimaplib.aioimaplib import Command, quoted
from cryptography import x509

from flowrt.adapters.mail.check.common import (
    check_mailbox_server,
    connect_stage,
    failing,
    mail_endpoint,
    refuse_plaintext,
    similar,
    start_client,
    starttls,
    tls_stage,
)
from flowrt.adapters.mail.check.target import CheckOptions
from flowrt.adapters.mail.imap import errors
from flowrt.adapters.mail.imap.client import ImapClient
from flowrt.adapters.mail.imap.parse import encode_folder, response_code, response_text

# The sender's login (LOGIN / AUTHENTICATE PLAIN / CRAM-MD5, and its error mapping), reused
# as it is rather than written twice.
from flowrt.adapters.mail.imap.session import authenticate
from flowrt.adapters.mail.sasl import oauth2_mechanism
from flowrt.adapters.mail.sender.endpoint import MailLogin
from flowrt.connectivity.chain import peer_chain
from flowrt.connectivity.report import ConnectivityReport
from flowrt.errors import MessagingException
from flowrt.net import ProxyRoute, connect
from flowrt.security import TenantSecurity, unverified_context

_STATUS = re.compile(r"\((?P<items>[^)]*)\)\s*$")


async def check(opts: CheckOptions, security: TenantSecurity, report: ConnectivityReport) -> None:
    await check_mailbox_server(opts, security, report, _session, _fetch_chain)


async def _session(
    opts: CheckOptions,
    context: ssl.SSLContext,
    route: ProxyRoute | None,
    security: TenantSecurity,
    report: ConnectivityReport,
    login: MailLogin | None,
) -> None:
    implicit = opts.protection == "imaps"
    sock = await connect_stage(report, opts, route)
    with failing(report, "greeting", connecting=opts):
        client = await start_client(
            ImapClient.start, opts, sock, context if implicit else None, route
        )
    try:
        if implicit:
            tls_stage(report, client.ssl_object(), security)
        greeting = client.greeting.decode("utf-8", "replace").strip()
        with failing(report, "greeting"):
            if client.state == "LOGOUT":
                raise _refused(opts, greeting)
        report.stage("greeting", greeting)
        with failing(report, "capabilities", connecting=opts):
            await client.capability()
        report.stage("capabilities", _capabilities(client))
        with failing(report, "starttls", connecting=opts):
            encrypted = await starttls(
                opts, "STARTTLS", client.has("STARTTLS"), lambda: client.starttls(context)
            )
        if encrypted and not implicit:
            tls_stage(report, client.ssl_object(), security)
            report.stage("capabilities", _capabilities(client))
        if login is not None:
            with failing(report, "auth", connecting=opts):
                refuse_plaintext(opts, encrypted)
                how = _mechanism(client, opts, login)
                await authenticate(client, mail_endpoint(opts, login, context, route))
            report.stage("auth", f"{how} as {login.user}")
            if opts.list_folders:
                with failing(report, "folders"):
                    await _list_folders(client, report)
            elif opts.check_mailbox:
                with failing(report, "mailbox"):
                    await _check_mailbox(client, opts, login, report)
        await client.logout()
        report.stage("logout", "LOGOUT")
    finally:
        client.abort()


def _refused(opts: CheckOptions, greeting: str) -> MessagingException:
    return errors.not_a_greeting(greeting, opts.host, opts.port)


def _capabilities(client: ImapClient) -> str:
    return " ".join(sorted(client.capabilities))


def _mechanism(client: ImapClient, opts: CheckOptions, login: MailLogin) -> str:
    """What the sender's login will say (for the stage line only)."""
    if client.state == "AUTH":
        return "PREAUTH"
    if opts.auth == "encrypted":
        return "AUTHENTICATE CRAM-MD5"
    if opts.auth == "oauth2":
        return f"AUTHENTICATE {oauth2_mechanism(lambda m: client.has(f'AUTH={m}')) or 'XOAUTH2'}"
    password = login.password.reveal() if login.password is not None else ""
    if client.has("AUTH=PLAIN") and (
        client.has("LOGINDISABLED") or not (login.user.isascii() and password.isascii())
    ):
        return "AUTHENTICATE PLAIN"
    return "LOGIN"


async def _list_folders(client: ImapClient, report: ConnectivityReport) -> None:
    folders = sorted(await client.list_folders("*"), key=lambda f: (f[0] != "INBOX", f[0]))
    report.results["folders"] = [
        {"name": name, "attributes": list(flags)} for name, flags in folders
    ]
    details = [f"{name}  ({' '.join(flags)})" if flags else name for name, flags in folders]
    report.stage("folders", f"{len(folders)} folder(s)", details)


async def _check_mailbox(
    client: ImapClient, opts: CheckOptions, login: MailLogin, report: ConnectivityReport
) -> None:
    folder = opts.check_mailbox
    assert folder is not None
    command = Command(
        "STATUS",
        client.protocol.new_tag(),
        quoted(encode_folder(folder)),
        "(MESSAGES UNSEEN UIDVALIDITY)",
        loop=asyncio.get_running_loop(),
    )
    response = await client.execute(command, f"STATUS {folder}")
    if response.result != "OK":
        text = f"{response.result} {response_text(response)}".strip()
        if response_code(response) == "NONEXISTENT" or response.result == "NO":
            names = [name for name, _ in await client.list_folders("*")]
            where = f"{opts.host}:{opts.port}"
            hint = _folder_hint(folder, names)
            raise errors.folder_not_found(folder, login.user, where, text, hint)
        raise errors.status_failed(folder, text)
    counts = _status_items(response.lines[:-1])
    total, unread = counts.get("MESSAGES", 0), counts.get("UNSEEN", 0)
    report.results["mailbox"] = {
        "folder": folder,
        "total": total,
        "unread": unread,
        "uidvalidity": counts.get("UIDVALIDITY"),
    }
    report.stage("mailbox", f"{folder}: {total} message(s), {unread} unread (STATUS, read-only)")


def _status_items(lines: list[object]) -> dict[str, int]:
    """``STATUS "INBOX" (MESSAGES 3 UNSEEN 1)`` -> {"MESSAGES": 3, "UNSEEN": 1}."""
    out: dict[str, int] = {}
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        match = _STATUS.search(bytes(line).decode("utf-8", "replace"))
        if match is None:
            continue
        words = match.group("items").split()
        for key, value in zip(words[::2], words[1::2], strict=False):
            if value.isdigit():
                out[key.upper()] = int(value)
    return out


def _folder_hint(folder: str, names: list[str]) -> str:
    close = similar(folder, names)
    if close:
        return f"the mailbox has no folder {folder!r}; similar folders: {', '.join(close)}"
    shown = ", ".join(sorted(names)[:20]) or "none"
    return f"the mailbox has no folder {folder!r}; its folders: {shown}"


async def _fetch_chain(opts: CheckOptions, route: ProxyRoute | None) -> list[x509.Certificate]:
    """A second connection without validation, only to read the server's chain."""
    implicit = opts.protection == "imaps"
    context = unverified_context()
    sock = await connect(opts.host, opts.port, route=route, timeout=opts.timeout)
    client = await ImapClient.start(
        sock,
        host=opts.host,
        port=opts.port,
        timeout=opts.timeout,
        tls=context if implicit else None,
    )
    try:
        if not implicit:
            await client.starttls(context)
        return peer_chain(client.ssl_object())
    finally:
        client.abort()
