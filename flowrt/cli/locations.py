"""`flowrt locations ...`: on-premise location IDs and their SOCKS5 connectors."""

from __future__ import annotations

import click

from flowrt.cli._complete import complete_credentials, complete_locations
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json, print_table
from flowrt.errors import CredentialError
from flowrt.security.credentials import KIND_SECURE_PARAMETER, KIND_USER, CredentialStore
from flowrt.security.locations import (
    Location,
    Locations,
    edit_locations,
    parse_proxy,
    validate_location_id,
)


@click.group("locations")
def locations() -> None:
    """On-premise location IDs and their connectors.

    Each location ID maps to the SOCKS5 connector it goes through.
    """


@locations.command("add")
@click.argument("location_id", metavar="ID")
@click.option("--proxy", required=True, metavar="HOST:PORT", help="The connector's address.")
@click.option(
    "--credential",
    metavar="NAME",
    help="Credential the connector checks.",
    shell_complete=complete_credentials,
)
@click.option("--replace", is_flag=True, help="Change an existing location.")
@pass_cli
def add(
    cli: CliContext, location_id: str, proxy: str, credential: str | None, replace: bool
) -> None:
    """Map location ID to the connector at HOST:PORT."""
    validate_location_id(location_id)
    host, port = parse_proxy(proxy)
    tenant = cli.tenant
    if credential is not None:
        found = CredentialStore.open(tenant).get(credential)
        if found.kind not in (KIND_USER, KIND_SECURE_PARAMETER):
            raise CredentialError(
                f"the credential '{credential}' is of kind {found.kind}; a connector takes "
                f"a {KIND_USER} or {KIND_SECURE_PARAMETER} credential"
            )
    location = Location(location_id, host, port, credential)
    with edit_locations(tenant) as store:
        existed = location_id in store
        store.add(location, replace=replace)
    suffix = f" with credential {credential}" if credential else ""
    click.echo(
        f"{'replaced' if existed else 'added'} location {location_id} -> {location.proxy}{suffix}"
    )


@locations.command("list")
@format_option
@pass_cli
def list_(cli: CliContext, fmt: str) -> None:
    """List locations: ID, connector address, credential name."""
    rows = [
        {"id": loc.id, "proxy": loc.proxy, "credential": loc.credential}
        for loc in Locations.open(cli.tenant)
    ]
    if fmt == "json":
        print_json(rows)
        return
    print_table(rows, ["id", "proxy", "credential"])


@locations.command("delete")
@click.argument("location_id", metavar="ID", shell_complete=complete_locations)
@pass_cli
def delete(cli: CliContext, location_id: str) -> None:
    """Delete location ID."""
    with edit_locations(cli.tenant) as store:
        store.delete(location_id)
    click.echo(f"deleted location {location_id}")


COMMANDS: list[click.Command] = [locations]
