"""The flow DSL: text -> typed, frozen model with source positions, and its validation.

Public surface::

    result = flowrt.dsl.parse_file("flows/mail.flow")   # never raises for bad input
    result.ok, result.flows, result.diagnostics
    flow = flowrt.dsl.load_flow("flows/mail.flow")      # raises FlowError when invalid
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path

from flowrt.dsl import model
from flowrt.dsl._parse import SyntaxProblem, parse_raw
from flowrt.dsl.build import build_flow
from flowrt.dsl.diagnostics import Diagnostic, has_errors, render_all
from flowrt.dsl.model import Flow, Pos
from flowrt.dsl.params import PARAM_CODES
from flowrt.dsl.spec import Report
from flowrt.errors import FlowError, UsageError

__all__ = [
    "Diagnostic",
    "Flow",
    "ParamValues",
    "ParseResult",
    "load_flow",
    "model",
    "parse_file",
    "parse_text",
]


@dataclasses.dataclass(frozen=True)
class ParseResult:
    file: str
    source: str
    flows: tuple[Flow, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)

    def render(self) -> str:
        return render_all(self.diagnostics, {self.file: self.source})


ParamValues = Mapping[str, Mapping[str, str]]


def parse_text(text: str, file: str = "<flow>", params: ParamValues | None = None) -> ParseResult:
    """Parse and validate a flow file's text; every problem found is in ``diagnostics``.

    ``params`` maps a flow's name to its parameter values; a parameter of that flow without
    a value (and without a default) is then an error. For a flow not in ``params`` defaults
    or placeholders stand in, and a problem in a value holding a placeholder is a warning.
    """
    parsed = parse_raw(text, file, params)
    report = Report(functools.partial(_stand_in, parsed.stand_ins) if parsed.stand_ins else None)
    raws, problems = parsed.flows, parsed.problems
    for problem in problems:
        code = "syntax" if isinstance(problem, SyntaxProblem) else problem.code
        report.error(problem.pos, code, problem.message)
    flows: list[Flow] = []
    names: dict[str, Pos] = {}
    for raw in raws:
        if raw.name in names:
            report.error(
                raw.pos,
                "repeated-flow",
                f"flow {raw.name!r} is defined twice (first on line {names[raw.name].line})",
            )
            continue
        names[raw.name] = raw.pos
        flow = build_flow(raw, text, report)
        if flow is not None:
            flows.append(flow)
    diagnostics = tuple(sorted(report.diagnostics, key=lambda d: (d.line, d.column)))
    if has_errors(diagnostics):
        flows = []
    return ParseResult(file, text, tuple(flows), diagnostics)


def _stand_in(spans: list[tuple[int, int, int, str, str]], diag: Diagnostic) -> Diagnostic | None:
    """A problem in a value holding a stand-in for a parameter: dropped when the use itself
    is wrong (that is the one problem reported), a warning when the parameter has no value
    yet (it is checked at deploy, when it has one)."""
    span = next((s for s in spans if diag.line == s[0] and s[1] <= diag.column <= s[2]), None)
    if span is None or not diag.is_error or diag.code in PARAM_CODES:
        return diag
    if span[4] == "failed":
        return None
    message = f"{diag.message} (not checked: parameter {span[3]} has no value here)"
    return dataclasses.replace(diag, severity="warning", message=message)


def parse_file(path: str | Path, params: ParamValues | None = None) -> ParseResult:
    """Read and validate a flow file. A file that cannot be read is a UsageError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a flow file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        diag = Diagnostic(str(path), line, 1, "error", "encoding", "the file is not UTF-8 text")
        return ParseResult(str(path), "", (), (diag,))
    return parse_text(text, str(path), params)


def load_flow(path: str | Path) -> Flow:
    """The one flow in ``path``; a FlowError listing every problem when it is not valid."""
    result = parse_file(path)
    if not result.ok:
        raise FlowError(
            f"{path} is not a valid flow:\n{result.render()}", diagnostics=result.diagnostics
        )
    if len(result.flows) != 1:
        raise FlowError(f"{path} holds {len(result.flows)} flows; expected exactly one")
    return result.flows[0]
