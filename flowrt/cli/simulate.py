"""``flowrt simulate FLOW --message FILE.eml``: run a flow on a sample mail, send nothing.

The simulation itself is a runtime variant (:mod:`flowrt.runtime.simulation`: the same
wiring as the runtime, only the last hop captured); this command parses the options, writes
the composed mails to ``--out`` as ``.eml`` and prints the report.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import click

from flowrt._fs import atomic_write
from flowrt.adapters.mail.mime.read import DEFECTS_PROPERTY
from flowrt.cli._context import CliContext, pass_cli
from flowrt.cli._output import format_option, print_json
from flowrt.dsl.model import Flow
from flowrt.engine.exchange import Exchange
from flowrt.engine.runner import Result
from flowrt.errors import (
    UsageError,
    chain_levels,
    find_hint,
    render_chain,
)
from flowrt.mpl.model import MplEntry
from flowrt.runtime.parameters import from_environment, read_param_file
from flowrt.runtime.prepare import load_with_params
from flowrt.runtime.simulation import Output, Trace, TracedStep
from flowrt.runtime.simulation import simulate as run_simulation
from flowrt.security import TenantSecurity
from flowrt.tenant import Tenant, missing_tenant_reason

_PREVIEW_CHARS = 300
_PREVIEW_LINES = 6
_NOT_A_MAIL_HINT = (
    "--message takes a mail as a mail client saves it (.eml, RFC 5322: header lines, a blank "
    "line, the body)"
)


# ----------------------------------------------------------------------------- command


def _pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", ctx=ctx, param=param)
        pairs.append((name.strip(), rest))
    return pairs


@click.command("simulate")
@click.argument("flow_file", metavar="FLOW", type=click.Path(dir_okay=False))
@click.option(
    "--message",
    "message_file",
    required=True,
    metavar="FILE.eml",
    type=click.Path(dir_okay=False),
    help="The sample mail (RFC 5322, as saved by a mail client).",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="K=V",
    callback=_pairs,
    help="Set a message header after reading the mail (repeatable).",
)
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="K=V",
    callback=_pairs,
    help="Set a message property before the pipeline runs (repeatable).",
)
@click.option(
    "--out",
    "out_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write each mail a receiver would send as DIR/<receiver>-<n>.eml.",
)
@click.option(
    "--live",
    is_flag=True,
    help="Send for real through the receivers (tenant credentials, keystore, locations).",
)
@click.option(
    "--params",
    "params_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Parameter values (TOML), as for deploy; above FLOWRT_PARAM_NAME and the tenant's.",
)
@format_option
@pass_cli
def simulate(
    cli: CliContext,
    flow_file: str,
    message_file: str,
    headers: list[tuple[str, str]],
    properties: list[tuple[str, str]],
    out_dir: str | None,
    live: bool,
    params_file: str | None,
    fmt: str,
) -> None:
    """Run FLOW on a sample mail; nothing is sent unless --live.

    Prints each step (line, status, time, what a filter or route decided) and the mails the
    receivers would send. Retries do not wait. The MPL entry is kept in the tenant, marked as
    a simulation, when there is one. Exit 0 when the message completed (also when it was
    filtered), 1 when it failed or was escalated, 2 for usage errors.
    """
    tenant = cli.tenant if live else cli.tenant_layout
    flow = load_with_params(
        flow_file,
        tenant,
        param_file=read_param_file(params_file) if params_file else None,
        environment=from_environment(),
    )
    raw = _read_message(Path(message_file))
    out = _prepare_out(Path(out_dir)) if out_dir else None
    security = TenantSecurity.open(tenant) if live else None
    done = run_simulation(
        flow,
        raw,
        tenant=tenant,
        live=security,
        headers=headers,
        properties=properties,
        inspect=_input,
        unreadable_hint=_NOT_A_MAIL_HINT,
    )
    source, result, trace, entry = done.source, done.result, done.trace, done.entry
    mpl_problem = done.mpl_problem
    _write_outputs(trace.outputs, out)
    report = _report(
        flow,
        Path(message_file),
        source,
        result,
        trace,
        entry,
        mpl=_mpl_note(tenant, result.message_id, mpl_problem),
    )
    if fmt == "json":
        print_json(report)
    else:
        _print_text(report)
    if not result.ok:
        click.get_current_context().exit(1)


def _read_message(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a mail file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None


def _prepare_out(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot create the directory ({exc.strerror})") from None
    return path


def _write_outputs(outputs: list[Output], out: Path | None) -> None:
    if out is None:
        return
    counts: dict[str, int] = {}
    for output in outputs:
        counts[output.receiver] = number = counts.get(output.receiver, 0) + 1
        path = out / f"{output.receiver}-{number}.eml"
        try:
            atomic_write(path, output.mail.data, mode=0o644)
        except OSError as exc:
            raise UsageError(f"cannot write {path} ({exc.strerror})") from None
        output.path = path


def _mpl_note(tenant: Tenant, message_id: str, problem: str | None) -> dict[str, Any]:
    if problem is not None:
        return {"recorded": False, "tenant": str(tenant.root), "reason": problem}
    if not tenant.exists():
        return {"recorded": False, "tenant": None, "reason": missing_tenant_reason(tenant.root)}
    return {"recorded": True, "tenant": str(tenant.root), "message_id": message_id}


# ----------------------------------------------------------------------------- report


def _report(
    flow: Flow,
    message_file: Path,
    source: dict[str, Any] | None,
    result: Result,
    trace: Trace,
    entry: MplEntry | None,
    *,
    mpl: dict[str, Any],
) -> dict[str, Any]:
    """The stable JSON document (``--format json``); the text output renders the same."""
    error = None
    if result.error is not None:
        error = {
            "chain": render_chain(result.error),
            "levels": [level.to_dict() for level in chain_levels(result.error)],
            "hint": find_hint(result.error),
            "failed_step": result.failed_step,
        }
    return {
        "flow": flow.name,
        "file": flow.file,
        "message_file": str(message_file),
        "message_id": result.message_id,
        "status": result.status.value,
        "runs": result.runs,
        "note": result.note,
        "input": source,
        "steps": [_step(traced) for traced in trace.steps],
        "waits": [{"after_run": run, "seconds": seconds} for run, seconds in trace.waits],
        "custom_properties": {}
        if entry is None
        else {name: list(values) for name, values in entry.custom_properties.items()},
        "error": error,
        "outputs": [_output(output) for output in trace.outputs],
        "mpl": mpl,
        "live": trace.live,
    }


def _input(exchange: Exchange) -> dict[str, Any]:
    defects = exchange.properties.get(DEFECTS_PROPERTY) or []
    return {
        "headers": [list(pair) for pair in exchange.headers.items()],
        "content_type": exchange.content_type,
        "charset": exchange.charset,
        "body_size": len(exchange.body),
        "attachments": [
            {"name": a.name, "content_type": a.content_type, "size": a.size}
            for a in exchange.attachments
        ],
        "defects": [str(d) for d in defects],
    }


def _step(traced: TracedStep) -> dict[str, Any]:
    event = traced.event
    return {
        "run": event.run,
        "step_id": event.step_id,
        "line": event.line,
        "branch": event.branch,
        "status": event.status.value,
        "duration_ms": round(event.duration_ms, 3),
        "note": event.note or None,
        "log": [{"level": level, "text": text} for level, text in traced.log],
        "error": None if event.error is None else f"{type(event.error).__name__}: {event.error}",
    }


def _output(output: Output) -> dict[str, Any]:
    # policy.default gives an EmailMessage: decoded headers, get_body, iter_attachments
    parsed = email.message_from_bytes(output.mail.data, policy=email.policy.default)
    return {
        "receiver": output.receiver,
        "branch": output.branch,
        "file": None if output.path is None else str(output.path),
        "sender": output.mail.sender,
        "recipients": list(output.mail.recipients),
        "size": len(output.mail.data),
        "headers": [[name, _header_text(value)] for name, value in parsed.items()],
        "body_preview": _preview(parsed),
        "attachments": list(_attachments(parsed)),
        "sent": output.sent,
    }


def _header_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a header the parser could not decode: show it as it is on the wire
        return repr(value)


def _preview(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        text = str(part.get_content())
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    lines = text.strip().splitlines()[:_PREVIEW_LINES]
    preview = "\n".join(lines)
    return preview if len(preview) <= _PREVIEW_CHARS else preview[:_PREVIEW_CHARS] + "…"


def _attachments(message: EmailMessage) -> Iterator[dict[str, Any]]:
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        yield {
            "name": part.get_filename(),
            "content_type": part.get_content_type(),
            "size": len(payload) if isinstance(payload, bytes) else 0,
        }


# ----------------------------------------------------------------------------- text


def _print_text(report: dict[str, Any]) -> None:
    echo: Callable[[str], None] = click.echo
    echo(f"simulating flow {report['flow']} ({report['file']}) on {report['message_file']}")
    echo("LIVE: the receivers send for real" if report["live"] else "nothing is sent")
    source = report["input"]
    if source is not None:
        count = len(source["attachments"])
        echo(
            f"mail: {len(source['headers'])} headers, body {_size(source['body_size'])} "
            f"{source['content_type']} ({source['charset']}), "
            f"{count} attachment{'s' * (count != 1)}"
        )
        for defect in source["defects"]:
            echo(f"  recovered: {defect}")
    _print_steps(report)
    if report["custom_properties"]:
        echo("")
        echo("custom header properties:")
        for name, values in report["custom_properties"].items():
            for value in values:
                echo(f"  {name} = {value}")
    echo("")
    runs = report["runs"]
    status = f"status: {report['status']} after {runs} run{'s' * (runs != 1)}"
    if report["note"]:
        status += f"; nothing sent: {report['note']}"
    echo(status)
    if report["error"] is not None and report["status"] != "COMPLETED":
        where = report["error"]["failed_step"]
        echo(f"error{f' in {where}' if where else ''}:")
        echo(report["error"]["chain"])
        if report["error"]["hint"]:
            echo(f"hint: {report['error']['hint']}")
    for output in report["outputs"]:
        _print_output(output)
    mpl = report["mpl"]
    echo("")
    if mpl["recorded"]:
        echo(
            f"MPL: recorded in {mpl['tenant']} as a simulation; see "
            f"`flowrt mpl show {mpl['message_id']}`"
        )
    else:
        echo(f"MPL: not recorded ({mpl['reason']})")


def _print_steps(report: dict[str, Any]) -> None:
    steps = report["steps"]
    if not steps:
        return
    rows = [
        [
            step["line"] or "-",
            step["step_id"],
            step["branch"] or "-",
            step["status"],
            f"{step['duration_ms']:.3f} ms",
            _note(step),
        ]
        for step in steps
    ]
    header = ["LINE", "STEP", "BRANCH", "STATUS", "TIME", "NOTE"]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(5)]
    waits = {wait["after_run"]: wait["seconds"] for wait in report["waits"]}
    total = report["runs"]
    current = 0
    for step, row in zip(steps, rows, strict=True):
        if step["run"] != current:
            if current in waits:
                _print_wait(current, total, waits[current])
            current = step["run"]
            click.echo("")
            click.echo(f"run {current}")
            cells = [h.ljust(w) for h, w in zip(header, widths, strict=False)]
            click.echo("  " + "  ".join(cells) + "  " + header[5])
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo(("  " + "  ".join(cells) + "  " + row[5]).rstrip())
        for entry in step["log"]:
            click.echo(f"        {entry['level']}: {entry['text']}")
    if current in waits:
        _print_wait(current, total, waits[current])


def _print_wait(run: int, total: int, seconds: float) -> None:
    click.echo(f"  retry {run} of {total - 1}: would wait {_seconds(seconds)}")


def _note(step: dict[str, Any]) -> str:
    return str(step["error"] or step["note"] or "")


def _print_output(output: dict[str, Any]) -> None:
    click.echo("")
    where = f" -> {output['file']}" if output["file"] else " (not written: no --out)"
    branch = f" [{output['branch']}]" if output["branch"] else ""
    click.echo(f"mail from receiver {output['receiver']}{branch}{where}")
    click.echo(f"  envelope: {output['sender']} -> {', '.join(output['recipients'])}")
    if output.get("sent"):
        click.echo(f"  {output['sent']}")
    for name, value in output["headers"]:
        click.echo(f"  {name}: {value}")
    preview = output["body_preview"]
    if preview:
        click.echo("  body:")
        for line in preview.splitlines():
            click.echo(f"    {line}")
    for item in output["attachments"]:
        name = item["name"] or "(no name)"
        click.echo(f"  attachment: {name} ({item['content_type']}, {_size(item['size'])})")


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1024 / 1024:.1f} MB"


def _seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


COMMANDS: list[click.Command] = [simulate]
