"""`flowrt upgrade` (apply store migrations) and `flowrt store check`."""

from __future__ import annotations

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json
from flowrt.store import store_config


@click.command("upgrade")
@pass_cli
def upgrade(cli: CliContext) -> None:
    """Bring the tenant's store to this flowrt's schema.

    PostgreSQL store: applies the numbered migrations that are not applied yet, in one
    transaction (run it once, from any node; running nodes refuse an older schema until
    then). SQLite store: the files are brought up to date as they are opened.
    """
    tenant = cli.tenant.require()
    config = store_config(tenant)
    if config is None:
        from flowrt.store import open_mpl, open_state

        for opened in (open_mpl(tenant, create=False), open_state(tenant, create=False)):
            if opened is not None:
                opened.close()
        click.echo("store: SQLite files in the tenant directory, up to date")
        return
    from flowrt.store.setup import upgrade as run_upgrade

    before, after = run_upgrade(tenant)
    if before == after:
        click.echo(f"store {config.shown}: schema version {after}, nothing to do")
    else:
        click.echo(f"store {config.shown}: schema version {before} -> {after}")


@click.group("store")
def store() -> None:
    """The tenant's store (SQLite files, or a PostgreSQL database shared by nodes)."""


@store.command("check")
@format_option
@pass_cli
def check(cli: CliContext, fmt: str) -> None:
    """Connect to the tenant's store and check its schema and tenant."""
    tenant = cli.tenant.require()
    config = store_config(tenant)
    if config is None:
        if fmt == "json":
            print_json({"backend": "sqlite", "where": str(tenant.root)})
            return
        click.echo(f"store: SQLite files in {tenant.root}")
        return
    from flowrt.store import open_database
    from flowrt.store.pg.schema import SCHEMA_VERSION

    open_database(tenant, max_size=1).close()
    if fmt == "json":
        print_json(
            {
                "backend": "postgresql",
                "where": config.shown,
                "schema_version": SCHEMA_VERSION,
                "tenant_id": config.tenant_id,
            }
        )
        return
    click.echo(
        f"store: {config.shown} (PostgreSQL): reachable, schema version {SCHEMA_VERSION}, "
        f"tenant {config.tenant_id}"
    )


COMMANDS: list[click.Command] = [upgrade, store]
