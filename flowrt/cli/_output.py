"""Rendering for listing commands: a table on a terminal, or JSON with ``--format json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def format_option(func: F) -> F:
    """The ``--format text|json`` option every listing command takes."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output as a readable table or as JSON.",
    )(func)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table; headers in upper case. Empty cells print as ``-``."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]
    header = "  ".join(col.upper().ljust(widths[i]) for i, col in enumerate(columns))
    click.echo(header.rstrip())
    for line in cells:
        click.echo("  ".join(v.ljust(widths[i]) for i, v in enumerate(line)).rstrip())


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value)


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def is_terminal() -> bool:
    return sys.stdout.isatty()
