"""Fixtures for the engine tests: a flow from text, compiled, run with a captured delivery,
a fake sleep, and an MPL store in the test's directory."""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowrt.dsl import load_flow
from flowrt.engine.exchange import Attachment, Exchange, Headers
from flowrt.engine.pipeline import Pipeline, compile_flow
from flowrt.engine.runner import Deliver, Result, Runner, StepEvent
from flowrt.mpl.model import MplEntry
from flowrt.mpl.recorder import MplRecorder
from flowrt.mpl.store import MplStore

SENDER = """\
    sender mail {
        protocol   imap
        address    "imap.example.com"
        protection imaps
        auth       plain credential "in"
    }
"""


def receiver(name: str, extra: str = "") -> str:
    return (
        f"    receiver mail {name} {{\n"
        '        address    "smtp.example.com"\n'
        "        protection smtps\n"
        '        from       "flow@example.com"\n'
        f'        to         "{name}@example.com"\n'
        + "".join(f"        {line.strip()}\n" for line in extra.strip().splitlines())
        + "    }\n"
    )


def flow_text(
    steps: str,
    *,
    receivers: tuple[str, ...] = ("out",),
    retry: str | None = None,
    log_level: str | None = None,
) -> str:
    """A valid flow; ``steps`` go into the pipeline one per line."""
    lines = ["flow t {"]
    if log_level:
        lines.append(f"    log-level {log_level}")
    text = "\n".join(lines) + "\n" + SENDER
    body = textwrap.dedent(steps).strip()
    if body:
        text += "    pipeline {\n"
        text += "".join(f"        {line.strip()}\n" for line in body.splitlines())
        text += "    }\n"
    text += "".join(receiver(name) for name in receivers)
    if retry:
        text += f"    on-error {{\n        retry {retry}\n    }}\n"
    return text + "}\n"


def line_of(text: str, needle: str) -> str:
    """The line number (as the MPL's model step ID) of the first line containing ``needle``."""
    return str(next(i for i, line in enumerate(text.splitlines(), 1) if needle in line))


def message(
    subject: str = "Invoice 42",
    *,
    body: str = "hello",
    headers: tuple[tuple[str, str], ...] = (),
    attachments: tuple[tuple[str, str], ...] = (),
) -> Exchange:
    """An exchange as the mail sender would make it; attachments are (name, type) pairs."""
    return Exchange(
        body=body.encode(),
        headers=Headers([("From", "alice@example.com"), ("Subject", subject), *headers]),
        attachments=[Attachment(n, t, f"data of {n}".encode()) for n, t in attachments],
    )


class Harness:
    """A flow compiled from text in ``folder``, run by a Runner that records into ``store``.

    ``sent`` holds (receiver, exchange) per delivery, ``waits`` each retry delay asked for,
    ``events`` what the observer heard.
    """

    def __init__(self, folder: Path, recorder: MplRecorder, text: str, **runner: Any) -> None:
        self.text = text
        path = folder / "t.flow"
        path.write_text(text, encoding="utf-8")
        self.pipeline: Pipeline = compile_flow(load_flow(path))
        self.recorder = recorder
        self.sent: list[tuple[str, Exchange]] = []
        self.waits: list[float] = []
        self.events: list[StepEvent] = []
        self.fail_delivery: Callable[[str, Exchange], Awaitable[None]] | None = None
        self.runner = Runner(
            self.pipeline,
            recorder,
            runner.pop("deliver", self._deliver),
            sleep=self._sleep,
            observer=self.events.append,
            version="1",
            **runner,
        )

    async def _deliver(self, name: str, ex: Exchange) -> None:
        if self.fail_delivery is not None:
            await self.fail_delivery(name, ex)
        self.sent.append((name, ex))

    async def _sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def run(self, exchange: Exchange | None = None) -> tuple[Result, MplEntry]:
        result = await self.runner.process(exchange or message())
        return result, self.entry(result.message_id)

    def entry(self, message_id: str) -> MplEntry:
        self.recorder.flush()
        return self.recorder.store.get(message_id)

    def line(self, needle: str) -> str:
        return line_of(self.text, needle)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[MplRecorder]:
    with MplRecorder(MplStore(tmp_path / "mpl.sqlite"), owns_store=True) as rec:
        yield rec


@pytest.fixture
def harness(tmp_path: Path, recorder: MplRecorder) -> Callable[..., Harness]:
    """``harness(flow_text(...), deliver=...)`` -> a Harness in the test's directory."""

    def make(text: str, deliver: Deliver | None = None) -> Harness:
        extra = {} if deliver is None else {"deliver": deliver}
        return Harness(tmp_path, recorder, text, **extra)

    return make
