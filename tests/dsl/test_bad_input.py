"""No flow text ends in a traceback: deep nesting and values out of range are errors at
file:line:col, and a seeded fuzz of the example flows through `validate` and `deploy` ends
every time with an exit code and words."""

from __future__ import annotations

import contextlib
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli

FLOWS = Path(__file__).resolve().parents[2] / "flows"
MAIL = (FLOWS / "mail.flow").read_text(encoding="utf-8")


def validate(path: Path) -> Result:
    return CliRunner().invoke(cli, ["validate", str(path)])


def assert_clean(result: Result) -> None:
    """An exit code the CLI documents, and no Python in the output."""
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    assert "Error:" not in result.output.replace("Error: No such", "")  # click's usage only


def line_col(text: str, needle: str) -> tuple[int, int]:
    start = text.index(needle)
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "retry  3 every 30s backoff 2",
            "retry  3 every 99999999999999999999s backoff 2",
            "retry: must be at most 3650d, got 99999999999999999999s",
        ),
        ("timeout       30s", "timeout       " + "9" * 400 + "s", "timeout: must be less than 5m"),
        ("max-messages  50", "max-messages  " + "9" * 400, "max-messages: must be at most"),
        ("backoff 2", "backoff 1e400", "retry: expected a backoff factor such as 2, got 1e400"),
        ("backoff 2", "backoff 1000", "retry: the backoff factor must be at most 100, got 1000"),
    ],
)
def test_values_out_of_range_are_errors_at_their_place(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = MAIL.replace(old, new, 1)
    path = tmp_path / "range.flow"
    path.write_text(text, encoding="utf-8")
    result = validate(path)
    assert_clean(result)
    assert result.exit_code == 1
    value = next(word for word in new.split() if word not in old.split())
    line, col = line_col(text, value)
    assert f"{path}:{line}:{col}: error: {message}" in result.output


@pytest.mark.parametrize(
    "nesting", ["(" * 1000 + "x exists" + ")" * 1000, "not " * 1000 + "x exists"]
)
def test_deep_nesting_is_refused_with_its_place(tmp_path: Path, nesting: str) -> None:
    text = MAIL.replace('filter  header.Subject matches "(?i)invoice"', f"filter {nesting}")
    path = tmp_path / "deep.flow"
    path.write_text(text, encoding="utf-8")
    result = validate(path)
    assert_clean(result)
    assert result.exit_code == 1
    line = text[: text.index("filter ")].count("\n") + 1
    assert re.search(
        rf"{re.escape(str(path))}:{line}:\d+: error: this condition nests more than 64 levels",
        result.output,
    )


def test_nesting_within_the_bound_still_parses(tmp_path: Path) -> None:
    condition = "(" * 30 + "not " * 30 + "header.X exists" + ")" * 30
    path = tmp_path / "ok.flow"
    path.write_text(MAIL.replace('header.Subject matches "(?i)invoice"', condition), "utf-8")
    result = validate(path)
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- the fuzz

SEED = 1414
MUTATIONS = 300
TOKENS = [
    "(" * 300, ")", "{", "}", '"', "${", "${header.", "\\", "#", "\n", "\x00", "\ufeff", "é",
    "9" * 400, "99999999999999999999s", "1e400", "-1", "0", "nan", "inf", "1h30m" * 50,
    "not " * 200, "and", "or", "matches", '"(?i"', '"[a-"', "route when", "to", "every",
    "flow", "sender mail", "receiver mail x", "pipeline", "on-error", "retry", "backoff",
    "address", '"host:99999999"', '"[::1"', "protection", "imaps", "smtps", "daily at 25:99",
    "tz \"Mars/Olympus\"", "poll idle", "split attachments", 'script "x:y"', "\t", "\r",
]  # fmt: skip


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text) + 1)
        kind = rng.randrange(5)
        if kind == 0:  # insert a token
            text = text[:at] + rng.choice(TOKENS) + text[at:]
        elif kind == 1:  # delete a span
            text = text[:at] + text[at + rng.randint(1, 40) :]
        elif kind == 2:  # duplicate a line
            lines = text.split("\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif kind == 3:  # swap two lines
            lines = text.split("\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        else:  # replace a number with a huge or odd one
            text = re.sub(r"\d+", lambda _m: rng.choice(TOKENS[13:20]), text, count=1)
    return text


@contextlib.contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: a parse that never ends is a bug this test looks for."""

    def stop(_signum: int, _frame: object) -> None:
        raise AssertionError(f"the fuzz did not finish within {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_fuzzed_flows_never_end_in_a_traceback(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sources = [p.read_text(encoding="utf-8") for p in sorted(FLOWS.glob("*.flow"))]
    tenant = tmp_path / "tenant"
    assert CliRunner().invoke(cli, ["--tenant", str(tenant), "init"]).exit_code == 0
    codes: set[int] = set()
    with hang_guard(240):
        for number in range(MUTATIONS):
            path = tmp_path / f"m{number % 10}.flow"
            data = mutate(rng.choice(sources), rng)
            path.write_bytes(data.encode("utf-8", "surrogatepass"))
            result = validate(path)
            assert_clean(result)
            codes.add(result.exit_code)
            if number % 3 == 0:  # deploy writes the tenant: fewer, it is slower
                deployed = CliRunner().invoke(cli, ["--tenant", str(tenant), "deploy", str(path)])
                assert_clean(deployed)
    assert codes >= {1}  # the mutations do break flows (a fuzz that breaks nothing tests nothing)
