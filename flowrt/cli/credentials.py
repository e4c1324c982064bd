"""`flowrt credentials ...`: the tenant credential store. Secrets go in, never out."""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from flowrt.cli._complete import complete_credentials
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.errors import CredentialError, UsageError
from flowrt.security.credentials import (
    KIND_OAUTH2,
    KIND_SECURE_PARAMETER,
    KIND_USER,
    KINDS,
    Credential,
    CredentialStore,
    OAuth2ClientCredentials,
    SecureParameter,
    UserCredential,
    describe,
    edit_credentials,
    validate_name,
)
from flowrt.security.locations import Locations
from flowrt.security.masterkey import load_master_key
from flowrt.security.secret import Secret


def read_secret(*, from_stdin: bool, what: str, confirm: bool, allow_empty: bool = False) -> str:
    """A secret from stdin (``--password-stdin``) or a no-echo prompt on a terminal.

    Never from a command-line argument, where `ps` and shell history would show it.
    """
    if from_stdin:
        value = sys.stdin.read()
        # One trailing line break is how `echo` and here-strings end the value.
        value = value.removesuffix("\n").removesuffix("\r")
    elif _stdin_is_terminal():
        value = click.prompt(
            what[:1].upper() + what[1:],
            hide_input=True,
            confirmation_prompt=confirm,
            default="",
            show_default=False,
        )
    else:
        raise UsageError(
            f"no {what} given",
            hint="pipe it in with --password-stdin, or run the command on a terminal "
            "to be prompted",
        )
    if not value and not allow_empty:
        raise UsageError(f"the {what} is empty")
    if any(ch in value for ch in "\r\n\0"):
        raise UsageError(f"the {what} contains a line break or a NUL character")
    return value


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


@click.group("credentials")
def credentials() -> None:
    """Named passwords and secrets (encrypted).

    The store is encrypted with AES-GCM under a key derived from the tenant master key.
    Secrets go in from stdin or a no-echo prompt; no command prints them. Refresh tokens
    for Microsoft 365 and Gmail come from `oauth2-login` (a sign-in in a browser).
    """


@credentials.command("add")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default=KIND_USER,
    show_default=True,
    help="What the credential holds.",
)
@click.option("--user", help="User name (kind user).")
@click.option(
    "--password-stdin",
    "--secret-stdin",
    "from_stdin",
    is_flag=True,
    help="Read the password or secret from stdin (else a no-echo prompt on a terminal).",
)
@click.option("--token-url", help="Token endpoint (kind oauth2-client-credentials).")
@click.option("--client-id", help="Client ID (kind oauth2-client-credentials).")
@click.option("--scope", help="Scope to request (kind oauth2-client-credentials, optional).")
@click.option("--replace", is_flag=True, help="Change an existing credential.")
@pass_cli
def add(
    cli: CliContext,
    name: str,
    kind: str,
    user: str | None,
    from_stdin: bool,
    token_url: str | None,
    client_id: str | None,
    scope: str | None,
    replace: bool,
) -> None:
    """Add credential NAME (secret from stdin or a prompt).

    The secret is never a command-line argument, where `ps` and shell history would see it.
    """
    validate_name(name)
    _check_options(kind, user=user, token_url=token_url, client_id=client_id, scope=scope)
    tenant = cli.tenant
    master_key = load_master_key(tenant)
    # Fail on a name in use before asking for a secret that would be thrown away.
    if not replace and name in CredentialStore.open(tenant, master_key):
        raise CredentialError(
            f"a credential named '{name}' already exists", hint="use --replace to change it"
        )
    what = "client secret" if kind == KIND_OAUTH2 else "password" if kind == KIND_USER else "value"
    secret = Secret(read_secret(from_stdin=from_stdin, what=what, confirm=True))
    credential: Credential
    if kind == KIND_USER:
        assert user is not None  # checked by _check_options
        credential = UserCredential(name, user, secret)
    elif kind == KIND_SECURE_PARAMETER:
        credential = SecureParameter(name, secret)
    else:
        assert token_url is not None and client_id is not None
        credential = OAuth2ClientCredentials(name, token_url, client_id, secret, scope)
    with edit_credentials(tenant, master_key) as store:
        existed = name in store
        store.put(credential, replace=replace)
    click.echo(f"{'replaced' if existed else 'added'} {kind} credential {name}")


def _check_options(
    kind: str,
    *,
    user: str | None,
    token_url: str | None,
    client_id: str | None,
    scope: str | None,
) -> None:
    given = {"--user": user, "--token-url": token_url, "--client-id": client_id, "--scope": scope}
    allowed = {
        KIND_USER: {"--user"},
        KIND_SECURE_PARAMETER: set(),
        KIND_OAUTH2: {"--token-url", "--client-id", "--scope"},
    }[kind]
    stray = [opt for opt, value in given.items() if value is not None and opt not in allowed]
    if stray:
        raise UsageError(f"{', '.join(stray)} does not apply to a {kind} credential")
    if kind == KIND_USER and not user:
        raise UsageError("a user credential needs --user")
    if kind == KIND_OAUTH2:
        if not token_url or not client_id:
            raise UsageError(f"a {KIND_OAUTH2} credential needs --token-url and --client-id")
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", token_url):
            raise UsageError(f"the token URL {token_url!r} is not an http(s) URL")
    for opt, value in given.items():
        if value is not None and any(not ch.isprintable() for ch in value):
            raise UsageError(f"{opt} contains control characters")


@credentials.command("list")
@format_option
@pass_cli
def list_(cli: CliContext, fmt: str) -> None:
    """List credentials: name, kind, user, last changed. Never a secret."""
    rows = [describe(c) for c in CredentialStore.open(cli.tenant)]
    if fmt == "json":
        print_json(rows)
        return
    print_table(rows, ["name", "kind", "user", "changed"])


@credentials.command("show")
@click.argument("name", shell_complete=complete_credentials)
@format_option
@pass_cli
def show(cli: CliContext, name: str, fmt: str) -> None:
    """Show one credential's public fields. Never the secret."""
    row: dict[str, Any] = describe(CredentialStore.open(cli.tenant).get(name))
    if fmt == "json":
        print_json(row)
        return
    for key, value in row.items():
        click.echo(f"{key.replace('_', ' ')}: {'-' if value is None else value}")


@credentials.command("delete")
@click.argument("name", shell_complete=complete_credentials)
@pass_cli
def delete(cli: CliContext, name: str) -> None:
    """Delete credential NAME (refused while an on-premise location uses it)."""
    tenant = cli.tenant
    with edit_credentials(tenant) as store:
        store.get(name)  # unknown name: CredentialError before anything else
        users = [loc.id for loc in Locations.open(tenant) if loc.credential == name]
        if users:
            raise CredentialError(
                f"the credential '{name}' is used by the location(s) {', '.join(users)}",
                hint="change or delete those locations first (`flowrt locations add ID "
                "--proxy HOST:PORT --replace`)",
            )
        store.delete(name)
    click.echo(f"deleted credential {name}")


COMMANDS: list[click.Command] = [credentials]


def _sign_in_command() -> None:
    # Its own module (browser, loopback listener); listed under `credentials`.
    from flowrt.cli.oauth2_login import oauth2_login

    credentials.add_command(oauth2_login)


_sign_in_command()
