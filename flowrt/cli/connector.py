"""`flowrt connector ...`: run the on-premise connector beside a mail server, check its mappings."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import click

from flowrt._fs import atomic_write
from flowrt.cli._output import echo_err, format_option, print_json
from flowrt.connector import check_mappings, hash_token, load_config, make_logger, serve
from flowrt.connector.check import CheckResult
from flowrt.connector.config import token_problem
from flowrt.errors import UsageError

_CONFIG = click.argument(
    "config_path", metavar="CONFIG.toml", type=click.Path(dir_okay=False, path_type=Path)
)


@click.group("connector")
def connector() -> None:
    """The on-premise connector (SOCKS5 with virtual host mappings).

    Runs beside the mail server and serves one location ID. Example configuration:
    flowrt/connector/example.toml in the flowrt package.
    """


@connector.command("run")
@_CONFIG
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console", "text"]),
    default="auto",
    show_default=True,
    help="One log line per decision, as with `flowrt run`: auto is JSON lines unless stderr "
    "is a terminal, console is key=value text (text is the same as console).",
)
def run(config_path: Path, log_format: str) -> None:
    """Serve the location in CONFIG.toml until SIGTERM or Ctrl-C.

    SIGHUP reads CONFIG.toml again: a valid file applies to new connections (open relays go
    on); a file with an error is not taken, the log says why and the old configuration
    stays. Changing `listen` needs a restart.
    """
    config = load_config(config_path)
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    logger = make_logger(fmt="json" if log_format == "json" else "text")
    asyncio.run(serve(config, logger=logger, reload=lambda: load_config(config_path)))


@connector.command("check")
@_CONFIG
@format_option
@click.pass_context
def check(ctx: click.Context, config_path: Path, fmt: str) -> None:
    """Try every mapping (TCP, and the TLS handshake for tcp-tls); exit 1 if one fails."""
    config = load_config(config_path)
    results = asyncio.run(check_mappings(config))
    if fmt == "json":
        print_json([r.to_dict() for r in results])
    else:
        for result in results:
            click.echo(result.line())
        for result in results:
            hint = _hint(result, config.truststore)
            if hint:
                echo_err(f"hint: {result.mapping.virtual}: {hint}")
    if not all(r.ok for r in results):
        ctx.exit(1)


def _hint(result: CheckResult, truststore: Path | None) -> str | None:
    mapping = result.mapping
    if result.outcome == "refused":
        return f"start the server behind {mapping.internal}, or fix `internal` in the mapping"
    if result.outcome in ("unreachable", "timeout", "dns_failure"):
        return f"check that this machine can reach {mapping.internal_host} (name, route, firewall)"
    if result.outcome == "tls_untrusted":
        issuer = result.certificate.issuer if result.certificate else "the issuer"
        if "match the name" in result.status:
            return "set `tls_name` to a name the certificate carries, or reissue the certificate"
        return f"add the root (and intermediate) certificates of {issuer} to {truststore}"
    if result.outcome == "tls_failed":
        return (
            "a tcp-tls mapping needs a port that speaks TLS from the first byte "
            "(993, 995, 465); use protocol tcp for a plain or STARTTLS port"
        )
    return None


@connector.command("new-token")
@click.option(
    "--file",
    "token_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the token to this file (mode 0600) instead of standard output.",
)
@click.option("--force", is_flag=True, help="Replace an existing token file.")
def new_token(token_file: Path | None, force: bool) -> None:
    """Make a random access token for a location, and print its token_sha256 line."""
    token = secrets.token_urlsafe(32)
    if token_file is not None:
        if token_file.exists() and not force:
            raise UsageError(f"{token_file} exists", hint="pass --force to replace it")
        atomic_write(token_file, (token + "\n").encode("ascii"), mode=0o600)
        # token_file in a config is relative to the config's folder: an absolute path is
        # right wherever the line is pasted.
        click.echo(f'token_file = "{token_file.resolve()}"')
    else:
        click.echo(token)
    echo_err(f'token_sha256 = "{hash_token(token)}"')
    echo_err(
        "give the same token to the runtime as the location's credential password, e.g. "
        "`flowrt credentials add LOCATION-connector --user LOCATION --password-stdin`"
    )


@connector.command("hash-token")
def hash_token_command() -> None:
    """Read a token from standard input and print the token_sha256 line for the config."""
    stdin = sys.stdin
    if sys.stdin.isatty():
        token = click.prompt("Token", hide_input=True, default="", show_default=False)
    else:
        token = stdin.read().removesuffix("\n").removesuffix("\r")
    problem = token_problem(token)
    if problem is not None:
        raise UsageError(problem)
    click.echo(f'token_sha256 = "{hash_token(token)}"')


COMMANDS: list[click.Command] = [connector]
