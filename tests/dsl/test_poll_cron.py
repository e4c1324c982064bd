"""``poll cron "M H DOM MON DOW" [tz "ZONE"]``: read into the model, and a bad expression is
an error at its line and column that names the field and what it allows."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flowrt.adapters.mail import model as mail
from flowrt.cli.main import cli
from tests.dsl.helpers import flow, only_flow, parse


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('poll cron "0 7-18 * * 1-5"', mail.PollCron("0 7-18 * * 1-5")),
        (
            'poll cron "30  6 * * mon-fri" tz "Europe/Berlin"',
            mail.PollCron("30 6 * * mon-fri", "Europe/Berlin"),
        ),
        ('poll cron "*/15 * * * *"', mail.PollCron("*/15 * * * *")),
    ],
)
def test_cron_is_read(line: str, expected: mail.PollCron) -> None:
    assert only_flow(flow(sender_extra=line)).sender.poll == expected


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("0 7-18 * * 8", "day of week '8' is not valid (allowed: 0-7 or sun-sat"),
        ("61 * * * *", "minute '61' is not valid (allowed: 0-59"),
        ("0 24 * * *", "hour '24' is not valid (allowed: 0-23"),
        ("0 0 0 * *", "day of month '0' is not valid (allowed: 1-31"),
        ("0 0 1 13 *", "month '13' is not valid (allowed: 1-12 or jan-dec"),
        ("*/0 * * * *", "minute '*/0' is not valid"),
        ("0 7 * *", "a cron expression has 5 fields (minute hour day-of-month month "),
        ("0 0 7 * * 1", "has 5 fields"),
        ("0 0 30 2 *", "never matches a date"),
        ("", "has 5 fields"),
    ],
)
def test_a_bad_cron_expression_is_an_error_at_its_position(expression: str, says: str) -> None:
    text = flow(sender_extra=f'poll cron "{expression}"')
    (error,) = [d for d in parse(text).diagnostics if d.is_error]
    line = text.splitlines()[error.line - 1]
    assert line.strip().startswith("poll cron")
    assert line[error.column - 1] == '"'  # the caret points at the expression
    assert error.file == "t.flow"
    assert error.message.startswith(f'poll: bad cron expression "{expression}": ')
    assert says in error.message


def test_cron_with_an_unknown_time_zone_is_an_error() -> None:
    text = flow(sender_extra='poll cron "0 7 * * *" tz "Mars/Olympus"')
    (error,) = [d for d in parse(text).diagnostics if d.is_error]
    assert 'unknown time zone "Mars/Olympus"' in error.message


def test_validate_prints_the_cron_error_with_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "cron.flow"
    path.write_text(flow(sender_extra='poll cron "0 7-18 * * 8"'))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:8:19: error: poll: bad cron expression" in result.output
    assert "day of week '8' is not valid" in result.output
