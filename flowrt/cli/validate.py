"""`flowrt validate` (filled in with the DSL)."""

import click

COMMANDS: list[click.Command] = []
