"""`flowrt credentials oauth2-login NAME --provider ...`: sign in once in a browser and store
the refresh token (encrypted) as credential NAME."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import webbrowser

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.dsl.values import parse_duration
from flowrt.errors import CredentialError, UsageError
from flowrt.security import Secret, TenantSecurity
from flowrt.security.credentials import (
    KIND_OAUTH2_REFRESH,
    CredentialStore,
    edit_credentials,
    validate_name,
)
from flowrt.security.masterkey import load_master_key

_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
# The presets' names (flowrt.adapters.mail.oauth2.providers), spelled out here so that the
# CLI starts without importing httpx.
PROVIDER_NAMES = ["microsoft", "google", "custom"]


@click.command("oauth2-login")
@click.argument("name")
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_NAMES),
    required=True,
    help="Preset for the sign-in and token addresses and the mail scopes.",
)
@click.option("--client-id", required=True, help="The app's client (application) ID.")
@click.option(
    "--client-secret-stdin",
    "secret_stdin",
    is_flag=True,
    help="Read a client secret from the first line of stdin (apps that have one).",
)
@click.option("--authorize-url", help="Sign-in address (overrides the preset).")
@click.option("--token-url", help="Token endpoint (overrides the preset).")
@click.option(
    "--scope",
    help="Scopes, space-separated (default: the preset's for IMAP, POP3 and SMTP).",
)
@click.option("--user", metavar="ADDRESS", help="The mailbox to sign in for and log in as.")
@click.option(
    "--no-browser",
    is_flag=True,
    help="Do not open a browser or wait on 127.0.0.1: paste the redirected address instead.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Loopback port for the redirect (0: any free port).",
)
@click.option(
    "--wait",
    "wait_text",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="How long to wait for the sign-in in the browser.",
)
@click.option(
    "--timeout",
    "timeout_text",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="Timeout of each request to the token endpoint.",
)
@click.option("--replace", is_flag=True, help="Replace an existing credential NAME.")
@pass_cli
def oauth2_login(
    cli: CliContext,
    name: str,
    provider: str,
    client_id: str,
    secret_stdin: bool,
    authorize_url: str | None,
    token_url: str | None,
    scope: str | None,
    user: str | None,
    no_browser: bool,
    port: int,
    wait_text: str,
    timeout_text: str,
    replace: bool,
) -> None:
    """Sign in to Microsoft 365, Gmail or another OAuth2 provider and store credential NAME.

    The authorization-code flow with PKCE: open the address shown, sign in; the browser is
    sent back to 127.0.0.1, where this command takes the code and exchanges it for a refresh
    token. Nothing secret is printed.
    """
    from flowrt.adapters.mail.oauth2.login import SignIn, run_sign_in
    from flowrt.adapters.mail.oauth2.providers import PROTOCOLS, PROVIDERS

    validate_name(name)
    preset = PROVIDERS[provider]
    authorize_url = authorize_url or preset.authorize_url
    token_url = token_url or preset.token_url
    scope = scope or preset.scope_for(PROTOCOLS) or None
    if authorize_url is None or token_url is None or scope is None:
        raise UsageError(
            f"--provider {provider} needs --authorize-url, --token-url and --scope",
            hint="take them from the identity provider's documentation of its OAuth2 endpoints",
        )
    for option, value in (("--authorize-url", authorize_url), ("--token-url", token_url)):
        if not _URL.fullmatch(value):
            raise UsageError(f"{option}: {value!r} is not an http(s) URL")
    for option, text in (("--client-id", client_id), ("--scope", scope), ("--user", user)):
        if text is not None and (not text.strip() or any(not c.isprintable() for c in text)):
            raise UsageError(f"{option} is empty or contains control characters")
    wait, timeout = _duration("--wait", wait_text), _duration("--timeout", timeout_text)
    tenant = cli.tenant
    master_key = load_master_key(tenant)
    if not replace and name in CredentialStore.open(tenant, master_key):
        raise CredentialError(
            f"a credential named '{name}' already exists", hint="use --replace to sign in again"
        )
    secret = _client_secret() if secret_stdin else None
    request = SignIn(name, preset, client_id, authorize_url, token_url, scope, user, secret)
    security = TenantSecurity(tenant, master_key)
    credential = run_sign_in(
        request,
        tls=security.client_context,
        show=lambda url, redirect: _show(url, redirect, no_browser, wait, user),
        paste=_paste if no_browser else None,
        port=port,
        wait=wait,
        timeout=timeout,
    )
    with edit_credentials(tenant, master_key) as store:
        existed = name in store
        store.put(credential, replace=replace)
    who = f", user {user}" if user else ""
    click.echo(
        f"{'replaced' if existed else 'added'} {KIND_OAUTH2_REFRESH} credential {name} "
        f"(provider {provider}{who})"
    )


def _duration(option: str, text: str) -> float:
    value = parse_duration(text)
    if value is None or value.total_seconds() <= 0:
        raise UsageError(f"{option}: bad duration {text!r} (e.g. 30s, 5m)")
    return value.total_seconds()


def _client_secret() -> Secret:
    # One line only: with --no-browser the redirected address follows on stdin.
    value = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not value:
        raise UsageError("--client-secret-stdin: the first line of stdin is empty")
    return Secret(value)


def _show(url: str, redirect: str, no_browser: bool, wait: float, user: str | None) -> None:
    who = f" as {user}" if user else ""
    click.echo(f"Open this address in a browser and sign in{who}:\n\n  {url}\n")
    if no_browser:
        click.echo(
            f"The browser is then sent to {redirect}?code=... (it may show that it cannot "
            "connect). Paste that whole address here:"
        )
        return
    if _display() and webbrowser.open(url):
        click.echo("(a browser was opened with it)")
    click.echo(f"Waiting up to {wait:g}s for the browser to come back to {redirect} ...")


async def _paste(redirect: str) -> str:
    line: str = await asyncio.to_thread(sys.stdin.readline)
    if not line.strip():
        raise UsageError(
            "nothing was pasted", hint=f"paste the address that starts with {redirect}"
        )
    return line


def _display() -> bool:
    """A browser can be opened here (a desktop session, not an SSH login to a server)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
