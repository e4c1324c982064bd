"""Running flow test cases on the simulation runtime and comparing what came out."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import tempfile
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from flowrt.dsl import Flow, parse_file
from flowrt.errors import FlowError, render_chain
from flowrt.flowtest.mails import input_bytes
from flowrt.flowtest.spec import Case, ExpectedMail, TestFile
from flowrt.runtime.simulation import Output, Simulated, simulate
from flowrt.tenant import Tenant

__all__ = ["CaseResult", "FileResult", "load_flow", "run_file"]


@dataclasses.dataclass(frozen=True)
class CaseResult:
    name: str
    line: int
    status: str
    failures: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclasses.dataclass(frozen=True)
class FileResult:
    path: str
    flow: str
    cases: tuple[CaseResult, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)


def load_flow(test: TestFile) -> Flow:
    """The flow under test, with the test's parameters (and the flow's defaults) only."""
    first = parse_file(test.flow)
    if not first.ok:
        raise FlowError(f"{test.flow} is not a valid flow:\n{first.render()}")
    names = [f.name for f in first.flows]
    name = test.flow_name or (names[0] if len(names) == 1 else None)
    if name is None or name not in names:
        raise FlowError(
            f'{test.path}: name = "FLOW" must name one of the flows of {test.flow}: '
            + ", ".join(names)
        )
    result = parse_file(test.flow, {name: dict(test.params)})
    if not result.ok:
        raise FlowError(
            f"{test.flow} with the parameters of {test.path}:\n{result.render()}",
            hint="add the missing values to the test file's [params]",
        )
    return next(f for f in result.flows if f.name == name)


def _parsed(output: Output) -> EmailMessage:
    message = email.message_from_bytes(output.mail.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        return str(part.get_content())
    except (LookupError, ValueError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def _mail_failures(expected: ExpectedMail, output: Output, index: int) -> Iterator[str]:
    message = _parsed(output)
    where = f"mail {index + 1} (receiver {output.receiver})"
    if expected.sender is not None and str(message.get("From", "")) != expected.sender:
        yield f"{where}: expected From {expected.sender!r}, got {str(message.get('From'))!r}"
    if expected.to is not None:
        got = sorted(str(r) for r in output.mail.recipients)
        if got != sorted(expected.to):
            yield f"{where}: expected recipients {sorted(expected.to)}, got {got}"
    if expected.subject is not None and str(message.get("Subject", "")) != expected.subject:
        yield (
            f"{where}: expected subject {expected.subject!r}, "
            f"got {str(message.get('Subject', ''))!r}"
        )
    for name, value in expected.headers.items():
        got_header = message.get(name)
        if got_header is None or str(got_header) != value:
            shown = "no such header" if got_header is None else repr(str(got_header))
            yield f"{where}: expected header {name}: {value!r}, got {shown}"
    body = _body(message)
    for fragment in expected.body:
        if fragment not in body:
            yield f"{where}: the body does not hold {fragment!r}"
    if expected.attachments is not None:
        names = sorted(part.get_filename() or "" for part in message.iter_attachments())
        if names != sorted(expected.attachments):
            yield f"{where}: expected attachments {sorted(expected.attachments)}, got {names}"


def _pick(expected: ExpectedMail, outputs: list[Output], used: set[int]) -> int | None:
    for index, output in enumerate(outputs):
        if index in used:
            continue
        if expected.receiver is None or output.receiver == expected.receiver:
            return index
    return None


def _failures(case: Case, done: Simulated) -> Iterator[str]:
    expect = case.expect
    result = done.result
    status = result.status.value
    chain = render_chain(result.error) if result.error is not None else ""
    if expect.status is not None and status != expect.status:
        reason = f" ({chain.splitlines()[0]})" if chain else ""
        yield f"expected status {expect.status}, got {status}{reason}"
    outputs = done.trace.outputs
    if expect.receivers is not None:
        got = sorted({o.receiver for o in outputs})
        if got != sorted(set(expect.receivers)):
            yield f"expected mails to receivers {sorted(set(expect.receivers))}, got {got}"
    if expect.mails is not None and len(outputs) != expect.mails:
        yield f"expected {expect.mails} mail(s), got {len(outputs)}"
    if expect.error is not None and expect.error not in chain:
        yield f"expected an error holding {expect.error!r}, got " + (repr(chain) or "none")
    if expect.note is not None and expect.note not in (result.note or ""):
        yield f"expected the note {expect.note!r}, got {result.note!r}"
    recorded = {} if done.entry is None else dict(done.entry.custom_properties)
    for name, value in expect.properties.items():
        values = [str(v) for v in recorded.get(name, ())]
        if value not in values:
            yield f"expected MPL property {name} = {value!r}, got {values or 'none'}"
    used: set[int] = set()
    for expected in expect.mail:
        index = _pick(expected, outputs, used)
        if index is None:
            who = f" from receiver {expected.receiver}" if expected.receiver else ""
            yield f"expected a mail{who}, none was sent"
            continue
        used.add(index)
        yield from _mail_failures(expected, outputs[index], index)


def run_case(flow: Flow, case: Case, tenant: Tenant) -> CaseResult:
    started = time.perf_counter()
    done = simulate(
        flow,
        input_bytes(case),
        tenant=tenant,
        headers=case.headers,
        properties=case.properties,
    )
    failures = tuple(_failures(case, done))
    return CaseResult(
        case.name, case.line, done.result.status.value, failures, time.perf_counter() - started
    )


def run_file(test: TestFile) -> FileResult:
    """Every case of ``test``; the MPL entries go to a throw-away store, nothing is sent."""
    flow = load_flow(test)
    with tempfile.TemporaryDirectory(prefix="flowrt-check-") as folder:
        tenant = Tenant(Path(folder) / "no-tenant")  # no tenant: a throw-away MPL
        results = tuple(run_case(flow, case, tenant) for case in test.cases)
    return FileResult(str(test.path), flow.name, results)


def to_dict(result: FileResult) -> dict[str, Any]:
    return {
        "file": result.path,
        "flow": result.flow,
        "ok": result.ok,
        "cases": [dataclasses.asdict(c) | {"ok": c.ok} for c in result.cases],
    }
