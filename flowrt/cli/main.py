"""Entry point of the ``flowrt`` command: global options, command registry, error rendering."""

from __future__ import annotations

import importlib
from typing import Any

import click

from flowrt.cli._complete import TENANT_META
from flowrt.cli._context import CliContext
from flowrt.errors import (
    FlowrtError,
    ProcessingError,
    chain_levels,
    chain_of,
    render_chain,
)
from flowrt.tenant import TENANT_ENV, resolve_tenant_dir

# Each command lives in a module of its own, imported only when the command runs (or help
# lists it): `flowrt status` need not load the flow tests, the simulator and the connector.
COMMAND_MODULES = {
    "check": "check",
    "connector": "connector",
    "credentials": "credentials",
    "deadletter": "deadletter",
    "deploy": "deploy",
    "init": "init",
    "keystore": "keystore",
    "locations": "locations",
    "locks": "locks",
    "monitor": "monitor",
    "mpl": "mpl",
    "notify": "notify",
    "params": "params",
    "run": "run",
    "simulate": "simulate",
    "status": "run",
    "store": "store",
    "test": "test",
    "undeploy": "deploy",
    "upgrade": "store",
    "validate": "validate",
}


class FlowrtGroup(click.Group):
    """Turns every expected failure into a message, a hint and an exit code: no traceback.
    Loads a command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMAND_MODULES, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"flowrt.cli.{COMMAND_MODULES[cmd_name]}")
            for command in module.COMMANDS:
                _accept_tenant_anywhere(command)
                self.add_command(command)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowrtError as exc:
            render_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def render_error(exc: FlowrtError) -> None:
    """``error: message`` (or the whole chain when there is one) and the hint beside it."""
    levels = chain_levels(exc)
    if not isinstance(exc, ProcessingError):
        # A tenant, store or security error that already says what the library said (a
        # damaged file, a malformed database) does not repeat it under the library's class
        # name. Under a ProcessingError a foreign level stays: a script's own exception.
        pairs = list(zip(levels, chain_of(exc), strict=False))
        said = " ".join(lv.message for lv, e in pairs if isinstance(e, FlowrtError))
        levels = [lv for lv, e in pairs if isinstance(e, FlowrtError) or lv.message not in said]
    if len(levels) > 1:
        click.echo("error: " + render_chain(levels), err=True)
    else:
        click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)


@click.group(cls=FlowrtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "--version", package_name="flowrt", prog_name="flowrt")
@click.option(
    "--tenant",
    "tenant_dir",
    metavar="DIR",
    default=None,
    help=f"Tenant directory (default: ${TENANT_ENV}, else ./.flowrt).",
)
@click.pass_context
def cli(ctx: click.Context, tenant_dir: str | None) -> None:
    """flowrt: run mail integration flows (IMAP/POP3 in, SMTP out) written in a small DSL."""
    ctx.obj = CliContext(tenant_dir=resolve_tenant_dir(tenant_dir))


def _tenant_after_verb(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    ctx.meta[TENANT_META] = value  # for shell completion, which runs no group callback
    found = ctx.find_object(CliContext)
    if found is not None:
        found.tenant_dir = resolve_tenant_dir(value)


def _accept_tenant_anywhere(command: click.Command) -> None:
    """``flowrt init --tenant X`` means ``flowrt --tenant X init``: people put it after the verb."""
    if not any("--tenant" in getattr(param, "opts", ()) for param in command.params):
        command.params.append(
            click.Option(
                ["--tenant", "tenant_after_verb"],
                metavar="DIR",
                expose_value=False,
                callback=_tenant_after_verb,
                help="Tenant directory (also accepted before the verb).",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_tenant_anywhere(sub)


def main() -> None:
    cli(prog_name="flowrt")


if __name__ == "__main__":  # pragma: no cover
    main()
