"""`flowrt init`: create a tenant (optionally on a PostgreSQL store)."""

from __future__ import annotations

import sys
import uuid

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json
from flowrt.errors import UsageError
from flowrt.security.masterkey import MasterKey
from flowrt.security.setup import init_tenant
from flowrt.store.config import StoreConfig, check_url
from flowrt.tenant import MASTER_KEY_ENV, Tenant

STORE_CREDENTIAL = "flowrt-store"


@click.command("init")
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="Keep the MPL, state and deployments in this PostgreSQL database "
    "(postgresql://USER@HOST:PORT/DB, no password), shared by several `flowrt run --node` "
    "processes. Default: SQLite files in the tenant directory.",
)
@click.option(
    "--store-password-stdin",
    is_flag=True,
    help=f"Read the database password from stdin and keep it in the credential store (as "
    f"{STORE_CREDENTIAL!r}); without it libpq's password or service file is used.",
)
@format_option
@pass_cli
def init(cli: CliContext, store_url: str | None, store_password_stdin: bool, fmt: str) -> None:
    """Create a tenant directory.

    Writes the master key, an empty keystore and an empty credential store.

    The tenant directory (--tenant, $FLOWRT_HOME, else ./.flowrt) must be new or empty; it is
    made readable by its owner only. The master key is 32 random bytes written to master.key
    (mode 0600), unless FLOWRT_MASTER_KEY is set: then that key (base64 of 32 bytes, e.g.
    from `openssl rand -base64 32`) is used and no key file is written. An existing tenant is
    never reset.

    With --store, the database must be reachable and hold no other tenant's store; its schema
    is created. Nothing is written when that fails.
    """
    config: StoreConfig | None = None
    password: str | None = None
    if store_password_stdin and store_url is None:
        raise UsageError("--store-password-stdin needs --store")
    if store_url is not None:
        check_url(store_url)
        if store_password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise UsageError("--store-password-stdin: no password on stdin")
        config = StoreConfig(
            url=store_url,
            tenant_id=uuid.uuid4().hex,
            credential=STORE_CREDENTIAL if password is not None else None,
        )
        from flowrt.store.setup import probe

        probe(config, password, tenant_dir=str(cli.tenant_dir))  # before anything is created

    def prepare(tenant: Tenant, key: MasterKey) -> None:
        assert config is not None
        from flowrt.store.setup import create_schema

        create_schema(tenant, key, config, password)

    result = init_tenant(
        cli.tenant_dir,
        store=None if config is None else config.to_json(),
        prepare=None if config is None else prepare,
    )
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
    if config is not None:
        click.echo(f"store: {config.shown} (PostgreSQL, tenant id {config.tenant_id})")
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
