"""``flowrt simulate`` as a runtime variant: a flow run on one sample message, nothing sent.

The message becomes an exchange exactly as the flow's sender makes it (its adapter's
``sample``), runs through the pipeline and runner wired by :func:`flowrt.runtime.wiring.wire`
as in production, and each receiver composes its output with its adapter's composer; only the
last hop differs: the output is captured instead of sent (or also sent, ``live``), and a
retry does not wait. The MPL entry is recorded in the tenant, marked as a simulation, when
there is a tenant. The CLI (``flowrt/cli/simulate.py``) parses options and prints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import structlog

from flowrt.adapters.registry import Adapters, Composer, Delivery
from flowrt.dsl.model import Flow
from flowrt.engine.exchange import Exchange
from flowrt.engine.pipeline import Pipeline
from flowrt.engine.runner import Result, Runner, StepEvent
from flowrt.errors import MessageFormatException, MplError
from flowrt.mpl.model import MplEntry
from flowrt.mpl.recorder import MplRecorder
from flowrt.mpl.store import MplStore
from flowrt.runtime.wiring import wire
from flowrt.security import TenantSecurity
from flowrt.store.opening import is_shared
from flowrt.tenant import Tenant

__all__ = ["Output", "Simulated", "Trace", "TracedStep", "simulate"]

VERSION = "simulation"


@dataclasses.dataclass
class TracedStep:
    """A step as the observer heard it, with the log lines it wrote."""

    event: StepEvent
    log: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Output:
    """One mail a receiver would have sent."""

    receiver: str
    branch: str
    mail: Any  # what the receiver's composer made (for mail: an OutgoingMail)
    path: Path | None = None
    sent: str | None = None  # with --live: what the server answered


class Trace:
    """Collects what the runner reports: steps (with their log lines), retry waits and the
    mails composed. It is the runner's observer, sleep and delivery at once."""

    def __init__(
        self,
        flow: Flow,
        keystore: object | None = None,
        *,
        live: TenantSecurity | None = None,
        adapters: Adapters | None = None,
    ) -> None:
        self.flow = flow
        self._keystore = keystore
        self._live = live  # with --live: send through the real receivers
        self.adapters = adapters or Adapters()
        self._smtp: dict[str, Delivery] = {}
        self.steps: list[TracedStep] = []
        self.waits: list[tuple[int, float]] = []  # (after run, seconds)
        self.outputs: list[Output] = []
        self._pending_log: list[tuple[str, str]] = []
        self._composers: dict[str, Composer] = {}

    @property
    def live(self) -> bool:
        return self._live is not None

    def observe(self, event: StepEvent) -> None:
        self.steps.append(TracedStep(event, self._pending_log))
        self._pending_log = []

    async def sleep(self, seconds: float) -> None:
        run = self.steps[-1].event.run if self.steps else 0
        self.waits.append((run, seconds))

    async def deliver(self, name: str, exchange: Exchange) -> None:
        composer = self._composers.get(name)
        if composer is None:  # made on first use, so that a receiver it rejects is recorded
            receiver = self.flow.receiver(name)
            composer = self.adapters[receiver.adapter].composer(receiver, self._keystore)
            self._composers[name] = composer
        output = Output(name, exchange.branch, composer.compose(exchange))
        self.outputs.append(output)
        if self._live is not None:
            adapter = self.adapters[self.flow.receiver(name).adapter]
            smtp = self._smtp.get(name)
            if smtp is None:
                smtp = adapter.delivery(self.flow.receiver(name), self._live)
                self._smtp[name] = smtp
            output.sent = await adapter.send(smtp, output.mail, exchange)

    async def close(self) -> None:
        for receiver in self._smtp.values():
            await receiver.aclose()
        await self.adapters.aclose()

    def capture_log(self, logger: Any, method: str, event_dict: Mapping[str, Any]) -> Any:
        """A structlog processor: the ``log`` steps' lines go into the trace, not to a
        terminal, so that ``--format json`` stays one JSON document."""
        self._pending_log.append((method, str(event_dict.get("event", ""))))
        raise structlog.DropEvent

    def logger(self) -> Any:
        return structlog.wrap_logger(
            structlog.ReturnLogger(),
            processors=[self.capture_log],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        )


@dataclasses.dataclass
class Simulated:
    """How a simulation ended: the message as read (before the pipeline changed it; None
    when it could not be read), the runner's result, what was traced, the MPL entry as
    stored, and why the MPL could not be written (None when it was)."""

    source: dict[str, Any] | None
    result: Result
    trace: Trace
    entry: MplEntry | None
    mpl_problem: str | None


def simulate(
    flow: Flow,
    raw: bytes,
    *,
    tenant: Tenant,
    live: TenantSecurity | None = None,
    headers: Sequence[tuple[str, str]] = (),
    properties: Sequence[tuple[str, str]] = (),
    inspect: Callable[[Exchange], dict[str, Any]] = lambda exchange: {},
    unreadable_hint: str | None = None,
) -> Simulated:
    """Run ``flow`` on the message ``raw``: ``headers`` set after reading it, ``properties``
    before the pipeline runs; ``inspect`` summarises the message as read. With ``live``
    (the tenant's security) the receivers also send for real."""
    adapters = Adapters()
    trace = Trace(flow, live or _keystore(flow, tenant, adapters), live=live, adapters=adapters)
    with ExitStack() as stack:
        opened: list[tuple[Path, str | None]] = []

        def recorder(pipeline: Pipeline) -> MplRecorder:
            made, path, problem = _open_recorder(tenant, stack, pipeline)
            opened.append((path, problem))
            return made

        wired = wire(
            flow,
            recorder=recorder,
            adapters=adapters,
            security=live,
            version=VERSION,
            deliver=trace.deliver,
            logger=trace.logger(),
            simulation=True,
            sleep=trace.sleep,
            observer=trace.observe,
        )
        store_path, mpl_problem = opened[0]
        runner = wired.runner
        try:
            source, result = _run(
                runner,
                wired.pipeline,
                raw,
                headers,
                properties,
                trace,
                inspect,
                unreadable_hint,
            )
        finally:
            closing_problem = _close(runner.recorder)
        mpl_problem = mpl_problem or closing_problem
        entry = _read_back(store_path, result.message_id)
    return Simulated(source, result, trace, entry, mpl_problem)


def _keystore(flow: Flow, tenant: Tenant, adapters: Adapters) -> TenantSecurity | None:
    """The tenant's keys, opened only when a receiver needs them (S/MIME)."""
    if not tenant.exists() or not any(adapters[r.adapter].needs_keys(r) for r in flow.receivers):
        return None
    return TenantSecurity.open(tenant)


def _open_recorder(
    tenant: Tenant, stack: ExitStack, pipeline: Pipeline
) -> tuple[MplRecorder, Path, str | None]:
    """A recorder on the tenant's MPL, or (no tenant, or its MPL cannot be opened) on a
    throw-away database, so that the runner works the same either way."""
    problem = None
    if tenant.exists() and is_shared(tenant):
        # reading a simulated entry back needs the same store; a shared tenant's MPL is
        # the nodes' production log, so a simulation keeps its entry to itself
        problem = "the tenant's MPL is in its PostgreSQL store; recorded in a throw-away log"
    elif tenant.exists():
        try:
            store = MplStore(tenant.mpl_path)
            return MplRecorder(store, level=pipeline.level, owns_store=True), tenant.mpl_path, None
        except MplError as exc:
            problem = str(exc)
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="flowrt-simulate-"))
    path = Path(folder) / "mpl.sqlite"
    return MplRecorder(MplStore(path), level=pipeline.level, owns_store=True), path, problem


def _close(recorder: MplRecorder) -> str | None:
    try:
        recorder.close()
    except MplError as exc:
        return str(exc)
    return None


def _run(
    runner: Runner,
    pipeline: Pipeline,
    raw: bytes,
    headers: Sequence[tuple[str, str]],
    properties: Sequence[tuple[str, str]],
    trace: Trace,
    inspect: Callable[[Exchange], dict[str, Any]],
    unreadable_hint: str | None,
) -> tuple[dict[str, Any] | None, Result]:
    """The mail as read (summarised before the pipeline changes it) and how it ended."""
    sender = pipeline.flow.sender
    try:
        if sender is None:  # load_flow refuses a flow without a sender
            raise MessageFormatException("the flow has no sender to read the mail")
        exchange = trace.adapters[sender.adapter].sample(sender, raw)
    except MessageFormatException as exc:
        exc.hint = exc.hint or unreadable_hint
        return None, runner.record_unreadable(exc)
    except Exception as exc:  # a reader bug must still end in a clear result, not a traceback
        error = MessageFormatException(
            "the mail could not be read", hint="this is a flowrt bug: please report it"
        )
        error.__cause__ = exc
        return None, runner.record_unreadable(error)
    for name, value in headers:
        exchange.headers.set(name, value)
    for name, value in properties:
        exchange.properties[name] = value
    summary = inspect(exchange)

    async def process() -> Result:
        try:
            return await runner.process(exchange)
        finally:
            await trace.close()

    return summary, asyncio.run(process())


def _read_back(path: Path, message_id: str) -> MplEntry | None:
    try:
        with MplStore(path, create=False) as store:
            return store.find(message_id)
    except MplError:
        return None
