"""``flowrt test smtp|imap|pop3 HOST[:PORT]``: connectivity tests, stage by stage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import hashes

from flowrt._fs import atomic_write
from flowrt.adapters.mail.check.target import CheckOptions, parse_target
from flowrt.adapters.mail.spec.connection import CONNECTOR_TLS
from flowrt.cli._complete import complete_credentials, complete_locations
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json
from flowrt.connectivity import ConnectivityReport
from flowrt.connectivity.chain import chain_zip, default_alias, to_import
from flowrt.dsl.values import parse_duration
from flowrt.errors import FlowrtError, UsageError
from flowrt.security import TenantSecurity, edit_keystore

Check = Callable[[CheckOptions, TenantSecurity, ConnectivityReport], Coroutine[Any, Any, None]]
PROTECTIONS = {
    "smtp": ["off", "starttls-mandatory", "starttls-optional", "smtps", CONNECTOR_TLS],
    "imap": ["off", "starttls-mandatory", "starttls-optional", "imaps", CONNECTOR_TLS],
    "pop3": ["off", "starttls-mandatory", "starttls-optional", "pop3s", CONNECTOR_TLS],
}


def _common(protocol: str, default: str) -> Callable[[Any], Any]:
    def decorate(func: Any) -> Any:
        options = [
            click.argument("target", metavar="HOST[:PORT]"),
            click.option(
                "--protection",
                type=click.Choice(PROTECTIONS[protocol]),
                default=default,
                show_default=True,
                help="TLS as a flow's protection setting says it; connector-tls: the "
                "on-premise connector does TLS (a tcp-tls mapping; needs --proxy on-premise).",
            ),
            click.option(
                "--auth",
                type=click.Choice(["none", "plain", "encrypted", "oauth2"]),
                default=None,
                help="Login: plain (LOGIN/USER), encrypted (CRAM-MD5) or oauth2 (OAUTHBEARER "
                "or XOAUTH2). Default: plain with --credential, else none (connection and TLS "
                "only).",
            ),
            click.option(
                "--credential",
                metavar="NAME",
                help="Credential to log in with.",
                shell_complete=complete_credentials,
            ),
            click.option(
                "--user",
                metavar="ADDRESS",
                help="Mailbox to log in as with --auth oauth2 (default: the credential's).",
            ),
            click.option(
                "--proxy",
                type=click.Choice(["internet", "on-premise"]),
                default="internet",
                show_default=True,
                help="Connect directly, or through the on-premise connector of --location.",
            ),
            click.option(
                "--location",
                metavar="ID",
                help="Location ID for --proxy on-premise.",
                shell_complete=complete_locations,
            ),
            click.option(
                "--timeout",
                default="30s",
                show_default=True,
                metavar="DURATION",
                help="Connect and read timeout of each stage.",
            ),
            click.option(
                "--no-validate",
                is_flag=True,
                help="Do not validate the server's certificate (only shows the chain).",
            ),
            click.option(
                "--allow-plaintext-auth",
                is_flag=True,
                help="Permit --auth plain without TLS (on a trusted network only).",
            ),
            click.option(
                "--download",
                type=click.Path(dir_okay=False),
                metavar="FILE.zip",
                help="Save the server's chain as .cer files in a zip.",
            ),
            click.option(
                "--import",
                "import_prefix",
                is_flag=False,
                flag_value="",
                default=None,
                metavar="[PREFIX]",
                help="Add the chain's root and intermediates to the keystore.",
            ),
            click.option(
                "--debug",
                is_flag=True,
                help="On failure, also show the protocol library's own exception (for a bug "
                "report; the chain above it says what went wrong).",
            ),
            format_option,
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _options(protocol: str, target: str, kw: dict[str, Any]) -> CheckOptions:
    protection, allow_plaintext = kw["protection"], kw["allow_plaintext_auth"]
    if protection == CONNECTOR_TLS:
        if kw["proxy"] != "on-premise":
            raise UsageError(
                "--protection connector-tls means the on-premise connector does TLS: it "
                "needs --proxy on-premise --location ID"
            )
        # The hop to the connector is plain by the user's word; the connector encrypts on.
        protection, allow_plaintext = "off", True
    host, port = parse_target(protocol, target, kw["protection"])
    timeout = parse_duration(kw["timeout"])
    if timeout is None or timeout.total_seconds() <= 0:
        raise UsageError(f"--timeout: bad duration {kw['timeout']!r} (e.g. 30s)")
    auth = kw["auth"] or ("plain" if kw["credential"] else "none")
    if auth != "none" and not kw["credential"]:
        raise UsageError(f"--auth {auth} needs --credential NAME")
    if kw["user"] is not None and auth != "oauth2":
        raise UsageError(
            "--user goes with --auth oauth2; other logins take the user from the credential"
        )
    list_folders, check_mailbox = kw.get("list_folders", False), kw.get("check_mailbox")
    if list_folders and check_mailbox:
        raise UsageError("--list-folders and --check-mailbox: give one of them")
    if (list_folders or check_mailbox) and auth == "none":
        what = "--list-folders" if list_folders else "--check-mailbox"
        raise UsageError(f"{what} needs a login: add --credential NAME")
    if kw["proxy"] == "on-premise" and not kw["location"]:
        raise UsageError("--proxy on-premise needs --location ID")
    return CheckOptions(
        protocol=protocol,
        host=host,
        port=port,
        protection=protection,
        auth=auth,
        credential=kw["credential"] if auth != "none" else None,
        location=kw["location"] if kw["proxy"] == "on-premise" else None,
        timeout=timeout.total_seconds(),
        validate=not kw["no_validate"],
        allow_plaintext_auth=allow_plaintext,
        tls_by_connector=kw["protection"] == CONNECTOR_TLS,
        mail_from=kw.get("mail_from"),
        rcpt_to=tuple(kw.get("rcpt_to") or ()),
        list_folders=list_folders,
        check_mailbox=check_mailbox,
        user=kw["user"],
    )


def _run(cli: CliContext, opts: CheckOptions, check: Check, kw: dict[str, Any]) -> None:
    tenant = cli.tenant
    security = TenantSecurity.open(tenant)
    text = kw["fmt"] == "text"
    report = _attempt(opts, check, security, text)
    if kw["import_prefix"] is not None and not report.ok and report.chain:
        imported = _import(tenant, report, kw["import_prefix"])
        if text:
            click.echo(f"imported {', '.join(imported)} into the keystore; testing again")
        report = _attempt(opts, check, TenantSecurity.open(tenant), text)
        report.imported = imported
    elif kw["import_prefix"] is not None and report.ok and text:
        click.echo("the keystore already trusts this server: nothing imported")
    if kw["download"] and report.chain:
        atomic_write(Path(kw["download"]), chain_zip([c.cert for c in report.chain]), mode=0o644)
        if text:
            click.echo(f"saved the chain ({len(report.chain)} certificates) to {kw['download']}")
    if text:
        if not report.ok:
            click.echo(report.render_failure(debug=kw["debug"]), err=True)
        click.echo(report.verdict())
    else:
        print_json(report.to_dict(debug=kw["debug"]))
    if not report.ok:
        raise SystemExit(1)


def _attempt(
    opts: CheckOptions, check: Check, security: TenantSecurity, text: bool
) -> ConnectivityReport:
    click_echo = (lambda stage: click.echo(stage.render())) if text else None
    report = ConnectivityReport(opts.title, on_stage=click_echo)
    if text:
        click.echo(f"flowrt test {opts.title}")
    try:
        asyncio.run(check(opts, security, report))
    except FlowrtError as exc:
        if report.error is None:
            report.fail("test", exc)
    return report


def _import(tenant: Any, report: ConnectivityReport, prefix: str) -> list[str]:
    certificates = to_import([c.cert for c in report.chain])
    alias = prefix or default_alias(certificates[0])
    with edit_keystore(tenant) as keystore:
        added = keystore.add_certificates(alias, certificates)
    return [
        f"{e.alias} (SHA-256 {e.certificate.fingerprint(hashes.SHA256()).hex()[:16]}…)"
        for e in added
    ]


@click.group("test")
def test_group() -> None:
    """Connectivity tests: reach a mail server the way a flow would, stage by stage."""


@test_group.command("smtp")
@_common("smtp", "starttls-mandatory")
@click.option(
    "--from",
    "mail_from",
    metavar="ADDRESS",
    help="Check that the server accepts this sender (nothing is sent).",
)
@click.option(
    "--to",
    "rcpt_to",
    multiple=True,
    metavar="ADDRESS",
    help="Check that the server accepts this recipient (with --from).",
)
@pass_cli
def test_smtp(cli: CliContext, /, target: str, **kw: Any) -> None:
    """Test an SMTP server: TLS, certificate chain, AUTH, and optionally addresses."""
    from flowrt.adapters.mail.smtp import check as smtp

    if kw["rcpt_to"] and not kw["mail_from"]:
        raise UsageError("--to needs --from")
    _run(cli, _options("smtp", target, kw), smtp.check, kw)


@test_group.command("imap")
@_common("imap", "starttls-mandatory")
@click.option("--list-folders", is_flag=True, help="List the mailbox's folders.")
@click.option(
    "--check-mailbox",
    metavar="FOLDER",
    help="Count the messages and unread messages in FOLDER (read-only, nothing changes).",
)
@pass_cli
def test_imap(cli: CliContext, /, target: str, **kw: Any) -> None:
    """Test an IMAP server: TLS, certificate chain, login, and folders or one mailbox."""
    from flowrt.adapters.mail.imap import check as imap

    _run(cli, _options("imap", target, kw), imap.check, kw)


@test_group.command("pop3")
@_common("pop3", "starttls-mandatory")
@click.option(
    "--check-mailbox",
    is_flag=True,
    help="Count the messages in the mailbox (STAT; nothing is deleted).",
)
@pass_cli
def test_pop3(cli: CliContext, /, target: str, **kw: Any) -> None:
    """Test a POP3 server: TLS, certificate chain, login, and the mailbox's count."""
    from flowrt.adapters.mail.pop3 import check as pop3

    kw["check_mailbox"] = "INBOX" if kw["check_mailbox"] else None
    _run(cli, _options("pop3", target, kw), pop3.check, kw)


COMMANDS: list[click.Command] = [test_group]
