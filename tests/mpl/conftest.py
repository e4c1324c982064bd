"""Fixtures for the MPL tests: a store in a temp dir, a recorder, a minimal tenant, the CLI."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.mpl import LogLevel, MplRecorder, MplStatus, MplStore, StepStatus
from flowrt.tenant import MARKER


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MplStore]:
    with MplStore(tmp_path / "mpl.sqlite") as opened:
        yield opened


@pytest.fixture
def recorder(store: MplStore) -> Iterator[MplRecorder]:
    rec = MplRecorder(store, level=LogLevel.INFO, flush_interval=0.05)
    yield rec
    rec.close()


@pytest.fixture
def tenant(tmp_path: Path) -> Path:
    """A minimal tenant: the directory and its marker file (enough for `flowrt mpl`)."""
    root = tmp_path / "tenant"
    root.mkdir()
    (root / MARKER).write_text("{}\n")
    return root


def run_cli(tenant: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), "mpl", *args])


def record(
    recorder: MplRecorder,
    message_id: str,
    *,
    flow: str = "invoice-forward",
    status: MplStatus = MplStatus.COMPLETED,
    start: float = 1_700_000_000.0,
    duration: float = 0.010,
    properties: Sequence[tuple[str, str]] = (),
    steps: int = 5,
) -> None:
    """One message the way the engine records it: an entry, one run, ``steps`` steps."""
    entry = recorder.begin(
        message_id,
        f"corr-{message_id}",
        flow,
        "3",
        "mail imap plant@mail.plant.example:143/INBOX",
        ["mail smtp accounting@smtp.example.com:465"],
        start=start,
    )
    for name, value in properties:
        entry.custom_property(name, value)
    run = entry.start_run(start=start)
    step_status = StepStatus.FAILED if status is MplStatus.FAILED else StepStatus.COMPLETED
    for i in range(steps):
        t = start + i * duration / max(steps, 1)
        run.step(f"step{i + 1}", str(10 + i), "", step_status, t, t + 0.001)
    run.finish(status, stop=start + duration)
    entry.complete(status, end=start + duration)
