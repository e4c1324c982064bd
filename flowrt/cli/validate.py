"""``flowrt validate FILE...``: parse and check flow files, report every problem."""

from __future__ import annotations

import click

from flowrt.cli._output import format_option, print_json
from flowrt.dsl import parse_file


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@format_option
def validate(files: tuple[str, ...], fmt: str) -> None:
    """Check flow files. Exit 0 when all are valid, 1 when any is not.

    Warnings are shown but do not fail. With --format json: one object per file with its
    flows and its diagnostics (errors and warnings).
    """
    results = [parse_file(path) for path in files]
    invalid = [r for r in results if not r.ok]
    if fmt == "json":
        print_json(
            [
                {
                    "file": str(r.file),
                    "ok": r.ok,
                    "flows": [f.name for f in r.flows],
                    "diagnostics": [d.to_dict() for d in r.diagnostics],
                }
                for r in results
            ]
        )
    else:
        for result in results:
            if result.diagnostics:
                click.echo(result.render(), err=not result.ok)
            names = ", ".join(f.name for f in result.flows)
            if result.ok:
                warnings = len(result.diagnostics)
                note = f", {warnings} warning{'s' * (warnings != 1)}" if warnings else ""
                click.echo(f"{result.file}: ok ({names}{note})")
            else:
                errors = sum(d.is_error for d in result.diagnostics)
                click.echo(f"{result.file}: invalid, {errors} error{'s' * (errors != 1)}", err=True)
    if invalid:
        raise SystemExit(1)


COMMANDS: list[click.Command] = [validate]
