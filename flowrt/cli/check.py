"""``flowrt check FLOW_OR_TEST...``: run flow tests on the simulation runtime, no network."""

from __future__ import annotations

from pathlib import Path

import click

from flowrt._fs import atomic_write
from flowrt.cli._output import format_option, print_json
from flowrt.errors import FlowError
from flowrt.flowtest.junit import junit_xml
from flowrt.flowtest.run import FileResult, run_file, to_dict
from flowrt.flowtest.spec import SUFFIX, read_test_file


def _test_files(paths: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """The test files named, or found beside the flow files named (FLOW.flow.test.toml)."""
    found: list[Path] = []
    untested: list[str] = []
    for text in paths:
        path = Path(text)
        if path.name.endswith(SUFFIX):
            found.append(path)
        elif path.with_name(path.name + SUFFIX).is_file():
            found.append(path.with_name(path.name + SUFFIX))
        elif not path.exists():
            found.append(path)  # reported as missing by the reader
        else:
            untested.append(text)
    return found, untested


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--junit", "junit_file", metavar="FILE", help="Also write JUnit XML to FILE.")
@format_option
def check(paths: tuple[str, ...], junit_file: str | None, fmt: str) -> None:
    """Run the flow tests of flows (FLOW.flow.test.toml beside FLOW.flow) or test files.

    Each case's mail runs through the flow as in production, on the simulation runtime:
    nothing is sent and no server is needed. Exit 0 when every case passed, 1 when any
    failed or a file has an error, 2 for usage errors.
    """
    files, untested = _test_files(paths)
    results: list[FileResult] = []
    errors: list[tuple[str, str]] = []
    for path in files:
        try:
            results.append(run_file(read_test_file(path)))
        except FlowError as exc:
            errors.append((str(path), exc.message))
    if junit_file:
        atomic_write(Path(junit_file), junit_xml(results, errors), mode=0o644)
    if fmt == "json":
        print_json(
            {
                "ok": not errors and all(r.ok for r in results),
                "files": [to_dict(r) for r in results],
                "errors": [{"file": f, "error": e} for f, e in errors],
                "untested": untested,
            }
        )
    else:
        _print_text(results, errors, untested)
    if errors or not all(r.ok for r in results):
        raise SystemExit(1)


def _print_text(
    results: list[FileResult], errors: list[tuple[str, str]], untested: list[str]
) -> None:
    for result in results:
        click.echo(f"{result.path}: flow {result.flow}")
        for case in result.cases:
            click.echo(f"  {'PASS' if case.ok else 'FAIL'}  {case.name} ({case.status})")
            for failure in case.failures:
                click.echo(f"        {failure}")
    for _path, message in errors:
        click.echo(f"error: {message}", err=True)
    for path in untested:
        click.echo(f"{path}: no tests (write {path}{SUFFIX})")
    cases = [c for r in results for c in r.cases]
    failed = sum(not c.ok for c in cases)
    summary = f"{len(cases)} case{'s' * (len(cases) != 1)}, {failed} failed"
    if errors:
        summary += f", {len(errors)} file{'s' * (len(errors) != 1)} with errors"
    click.echo(summary)


COMMANDS: list[click.Command] = [check]
