"""``flowrt run --once`` polls every flow now; ``--once --due`` only flows whose schedule has a
run due since their last poll (what a cron job wants), against real Dovecot and Postfix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.test_runtime_e2e import flowrt, mail, stack, tenant, write_flow
from tests.servers import DovecotServer

__all__ = ["stack", "tenant"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.servers


def run(tenant: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["flowrt", "--tenant", str(tenant), "run", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )


def unseen(dovecot: DovecotServer, user: str) -> int:
    return sum("\\Seen" not in flags for _u, flags, _r in dovecot.messages(user, "INBOX"))


def test_once_due_polls_only_when_the_schedule_says_and_once_polls_now(
    stack: dict[str, Any], dovecot: DovecotServer, tmp_path: Path
) -> None:
    tenant, source = stack["tenant"], stack["source"]
    flow = write_flow(tmp_path / "yearly.flow", stack, name="yearly")
    flow.write_text(flow.read_text().replace("every 1s", 'cron "0 0 1 1 *"'))
    assert flowrt(tenant, "deploy", str(flow)).exit_code == 0

    dovecot.append(source.address, "INBOX", mail("first"))
    first = run(tenant, "--once", "--due")  # never polled: due
    assert first.returncode == 0, first.stderr
    assert unseen(dovecot, source.address) == 0

    dovecot.append(source.address, "INBOX", mail("second"))
    second = run(tenant, "--once", "--due")  # polled this year already: not due
    assert second.returncode == 0, second.stderr
    assert '"poll not due"' in second.stderr and '"flow": "yearly"' in second.stderr
    assert unseen(dovecot, source.address) == 1

    now = run(tenant, "--once")  # whatever the schedule says
    assert now.returncode == 0, now.stderr
    assert unseen(dovecot, source.address) == 0


def test_due_without_once_is_a_usage_error(tenant: Path) -> None:
    result = flowrt(tenant, "run", "--due")
    assert result.exit_code == 2
    assert "--due needs --once" in result.output


def test_run_help_says_what_once_and_due_poll(tenant: Path) -> None:
    text = " ".join(flowrt(tenant, "run", "--help").output.split())
    assert "Poll every deployed flow once now, whatever its schedule" in text
    assert "poll only the flows whose schedule (every, daily at, cron) has a run due" in text
