"""Text rendering of the MPL for people: the ``mpl list`` / ``mpl tail`` rows and ``mpl show``.

Times are shown in UTC with a ``Z`` (the same instant in every terminal and in the JSON form);
durations in milliseconds. The error chain is printed exactly as
:func:`flowrt.errors.render_chain` produced it, with the hint on its own line after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from flowrt.mpl.model import MplEntry, MplSummary, Run, Step

__all__ = [
    "LIST_COLUMNS",
    "format_ms",
    "format_time",
    "render_entry",
    "summary_row",
    "tail_header",
    "tail_line",
]

TAIL_COLUMNS = ("message id", "flow", "version", "status", "log start", "duration", "failed step")
LIST_COLUMNS = (*TAIL_COLUMNS[:-1], "from", "subject", TAIL_COLUMNS[-1])
_SHOWN_TEXT = 40  # a long subject or sender is cut in the table (JSON has it whole)

# Fixed widths for `tail`, which prints rows one at a time and cannot align them afterwards.
_TAIL_WIDTHS = (36, 24, 7, 16, 24, 11)


def format_time(moment: datetime | None) -> str:
    """``2024-05-01 10:00:00.123Z``."""
    if moment is None:
        return ""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] + "Z"


def format_ms(ms: float | None) -> str:
    """``0.042 ms`` below one millisecond, ``12.3 ms`` above."""
    if ms is None:
        return ""
    if ms < 1:
        return f"{ms:.3f} ms"
    return f"{ms:.1f} ms"


def summary_row(summary: MplSummary) -> dict[str, str]:
    """One row of ``mpl list``, keyed by :data:`LIST_COLUMNS`."""
    status = summary.status.value + (" (sim)" if summary.simulation else "")
    return {
        "message id": summary.message_id,
        "flow": summary.flow,
        "version": summary.flow_version,
        "status": status,
        "log start": format_time(summary.log_start),
        "duration": format_ms(summary.duration_ms),
        "failed step": summary.failed_step or "",
        "from": _cut(summary.mail_from),
        "subject": _cut(summary.subject),
    }


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_TEXT else text[: _SHOWN_TEXT - 1] + "…"


def tail_header() -> str:
    return _fixed([col.upper() for col in TAIL_COLUMNS])


def tail_line(summary: MplSummary) -> str:
    row = summary_row(summary)
    return _fixed([row[col] or "-" for col in TAIL_COLUMNS])


def _fixed(cells: Sequence[str]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, _TAIL_WIDTHS, strict=False)]
    return "  ".join([*padded, *cells[len(_TAIL_WIDTHS) :]]).rstrip()


def render_entry(entry: MplEntry) -> str:
    """Everything about one message, for ``flowrt mpl show``."""
    lines: list[str] = []
    fields = [
        ("Message ID", entry.message_id),
        ("Correlation ID", entry.correlation_id),
        ("Application ID", entry.application_id or "-"),
        ("Flow", f"{entry.flow} (version {entry.flow_version})"),
        ("From", entry.mail_from or "-"),
        ("Subject", entry.subject or "-"),
        ("Sender", entry.sender),
        ("Receivers", ", ".join(entry.receivers) or "-"),
        ("Status", entry.status.value),
        ("Log start", format_time(entry.log_start)),
        ("Log end", format_time(entry.log_end) or "-"),
        ("Duration", format_ms(entry.duration_ms) or "-"),
        ("Log level", entry.log_level.value),
        ("Simulation", "yes" if entry.simulation else "no"),
    ]
    if entry.node:
        fields.append(("Node", entry.node))
    if entry.filter_note:
        fields.append(("Filtered", entry.filter_note))
    lines += _pairs(fields)

    if entry.custom_properties:
        lines += ["", "Custom header properties:"]
        pairs = [(name, v) for name, vs in entry.custom_properties.items() for v in vs]
        lines += _pairs(pairs, indent="  ")

    for run in entry.runs:
        lines += ["", *_render_run(run)]

    if entry.log:
        lines += ["", "Log:"]
        lines += [f"  {format_time(line.time)}  {line.level:<5}  {line.text}" for line in entry.log]

    if entry.error is not None:
        where = f" (last failed step: {entry.error.failed_step})" if entry.error.failed_step else ""
        lines += ["", f"Error{where}:", entry.error.chain]
        if entry.error.hint:
            lines.append(f"hint: {entry.error.hint}")
    return "\n".join(lines)


def _pairs(pairs: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    width = max(len(name) for name, _ in pairs)
    return [f"{indent}{name.ljust(width)}  {value}" for name, value in pairs]


def _render_run(run: Run) -> list[str]:
    head = f"Run {run.number}: {run.status.value}, started {format_time(run.start)}" + (
        f", {format_ms(run.duration_ms)}" if run.stop is not None else ""
    )
    if not run.steps:
        return [head, "  (no steps)"]
    header = ["STEP", "MODEL STEP", "BRANCH", "STATUS", "DURATION", "ERROR"]
    cells = [
        [
            step.step_id,
            step.model_step_id or "-",
            step.branch or "-",
            step.status.value,
            format_ms(step.duration_ms),
            step.error or "",
        ]
        for step in run.steps
    ]
    widths = [max(len(header[i]), *(len(row[i]) for row in cells)) for i in range(len(header))]
    lines = [head, "  " + _join(header, widths)]
    for step, row in zip(run.steps, cells, strict=True):
        lines.append("  " + _join(row, widths))
        lines += _render_content(step)
    return lines


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _render_content(step: Step) -> list[str]:
    content = step.content
    if content is None:
        return []
    note = f", truncated (original {content.size} bytes)" if content.truncated else ""
    lines = [f"      content after {step.step_id}{note}:"]
    lines += [f"        {name}: {value}" for name, value in content.headers]
    lines.append("")
    lines += [f"        {line}" for line in content.body.splitlines()]
    if content.truncated:
        lines.append("        [truncated]")
    return lines
