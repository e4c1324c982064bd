"""`flowrt init`: create a tenant."""

from __future__ import annotations

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json
from flowrt.security.setup import init_tenant
from flowrt.tenant import MASTER_KEY_ENV


@click.command("init")
@format_option
@pass_cli
def init(cli: CliContext, fmt: str) -> None:
    """Create a tenant directory.

    Writes the master key, an empty keystore and an empty credential store.

    The tenant directory (--tenant, $FLOWRT_HOME, else ./.flowrt) must be new or empty; it is
    made readable by its owner only. The master key is 32 random bytes written to master.key
    (mode 0600), unless FLOWRT_MASTER_KEY is set: then that key (base64 of 32 bytes, e.g.
    from `openssl rand -base64 32`) is used and no key file is written. An existing tenant is
    never reset.
    """
    result = init_tenant(cli.tenant_dir)
    if fmt == "json":
        print_json(
            {
                "tenant": str(result.tenant.root),
                "master_key": None
                if result.master_key_path is None
                else str(result.master_key_path),
                "master_key_from": "file" if result.master_key_path is not None else MASTER_KEY_ENV,
            }
        )
        return
    click.echo(f"created tenant {result.tenant.root}")
    if result.master_key_path is not None:
        click.echo(
            f"master key: {result.master_key_path} (mode 0600). Back it up: without it the "
            "keystore and the credential store cannot be opened."
        )
    else:
        click.echo(
            f"master key: taken from {MASTER_KEY_ENV}, not stored in the tenant. Keep it: "
            "every command on this tenant needs it."
        )


COMMANDS: list[click.Command] = [init]
