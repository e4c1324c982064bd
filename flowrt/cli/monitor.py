"""``flowrt monitor``: the web monitor, JSON API and metrics without a runtime, its token and
its settings. ``flowrt run --http ADDR`` serves the same inside the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from flowrt.cli._context import CliContext, pass_cli
from flowrt.errors import UsageError

_HTTP_HELP = "Serve on HOST:PORT (default: the tenant setting, else 127.0.0.1:8470)."
_TLS_HELP = "Serve HTTPS with this key pair from the tenant keystore."


@click.group("monitor", invoke_without_command=True)
@click.option("--http", "address", metavar="HOST:PORT", help=_HTTP_HELP)
@click.option("--tls-alias", metavar="ALIAS", help=_TLS_HELP)
@click.pass_context
def monitor(ctx: click.Context, address: str | None, tls_alias: str | None) -> None:
    """Serve the web monitor, the JSON API, /metrics and health endpoints for this tenant,
    read-only and without a runtime (Ctrl-C stops). Subcommands manage its token and
    settings."""
    if ctx.invoked_subcommand is not None:
        if address is not None or tls_alias is not None:
            raise UsageError("--http and --tls-alias go with `flowrt monitor` alone")
        return
    from flowrt.monitor.server import DEFAULT_ADDRESS, MonitorSettings, monitor_server

    cli = ctx.find_object(CliContext)
    assert cli is not None
    tenant = cli.tenant
    settings = MonitorSettings.load(tenant)
    server = monitor_server(
        tenant,
        address or settings.http or DEFAULT_ADDRESS,
        tls_alias=tls_alias or settings.tls_alias,
    )
    click.echo(f"flowrt monitor on {server.url} (Ctrl-C stops)", err=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, server.stop)
        await server.serve()

    asyncio.run(serve())


@monitor.command("token")
@pass_cli
def token(cli: CliContext) -> None:
    """Create the monitor's bearer token and print it once (only its hash is kept). A new
    token replaces the old one at once, also in a running monitor."""
    from flowrt.monitor.auth import create_token

    click.echo(create_token(cli.tenant))
    click.echo("the token is shown only now; send it as `Authorization: Bearer TOKEN`", err=True)


@monitor.command("settings")
@click.option("--http", "address", metavar="HOST:PORT", help="Address for `flowrt run`.")
@click.option("--no-http", is_flag=True, help="`flowrt run` serves no monitor unless told.")
@click.option("--tls-alias", metavar="ALIAS", help=_TLS_HELP)
@click.option("--no-tls", is_flag=True, help="Serve plain HTTP.")
@pass_cli
def settings(
    cli: CliContext, address: str | None, no_http: bool, tls_alias: str | None, no_tls: bool
) -> None:
    """Show or set the tenant's monitor settings: the address `flowrt run` serves the monitor
    on (without --http) and the keystore key pair for HTTPS."""
    from flowrt.monitor.server import MonitorSettings, parse_address
    from flowrt.security.keystore import Keystore

    if address is not None and no_http:
        raise UsageError("--http and --no-http exclude each other")
    if tls_alias is not None and no_tls:
        raise UsageError("--tls-alias and --no-tls exclude each other")
    tenant = cli.tenant
    current = MonitorSettings.load(tenant)
    if address is not None:
        parse_address(address)
        current.http = address
    if no_http:
        current.http = None
    if tls_alias is not None:
        Keystore.open(tenant).key_pair(tls_alias)  # refuse an alias that cannot serve TLS
        current.tls_alias = tls_alias
    if no_tls:
        current.tls_alias = None
    if address is not None or no_http or tls_alias is not None or no_tls:
        current.save(tenant)
    click.echo(f"http: {current.http or '(none: `flowrt run` serves no monitor)'}")
    click.echo(f"tls alias: {current.tls_alias or '(none: plain HTTP)'}")


COMMANDS: list[click.Command] = [monitor]
