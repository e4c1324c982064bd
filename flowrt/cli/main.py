"""Entry point of the ``flowrt`` command: global options, command registry, error rendering."""

from __future__ import annotations

from typing import Any

import click

from flowrt import __version__
from flowrt.cli._complete import TENANT_META
from flowrt.cli._context import CliContext
from flowrt.errors import FlowrtError, render_chain
from flowrt.tenant import TENANT_ENV, resolve_tenant_dir


class FlowrtGroup(click.Group):
    """Turns every expected failure into a message, a hint and an exit code: no traceback."""

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
    if exc.__cause__ is not None:
        click.echo("error: " + render_chain(exc), err=True)
    else:
        click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)


@click.group(cls=FlowrtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="flowrt")
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


def _register() -> None:
    # Each command group lives in its own module; the import order is the help order.
    from flowrt.cli import (
        check,
        connector,
        credentials,
        deadletter,
        deploy,
        init,
        keystore,
        locations,
        locks,
        monitor,
        mpl,
        notify,
        params,
        run,
        simulate,
        store,
        test,
        validate,
    )

    for module in (
        init,
        store,
        validate,
        simulate,
        check,
        test,
        deploy,
        params,
        run,
        keystore,
        credentials,
        locations,
        connector,
        locks,
        mpl,
        deadletter,
        monitor,
        notify,
    ):
        for command in module.COMMANDS:
            cli.add_command(command)
    for command in cli.commands.values():
        _accept_tenant_anywhere(command)


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


_register()


def main() -> None:
    cli(prog_name="flowrt")


if __name__ == "__main__":  # pragma: no cover
    main()
