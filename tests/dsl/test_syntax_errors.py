"""Malformed files: one clear error, on the right line, in words (no raw token names)."""

from __future__ import annotations

import re

import pytest

from flowrt.dsl import parse_text
from tests.dsl.helpers import flow, line_of

RAW_TOKEN = re.compile(r"__ANON|\$END|_NL|\bNAME\b|\bBARE\b|\bSTRING\b|\bLBRACE\b|\bRBRACE\b")


def single_error(text: str) -> tuple[int, int, str]:
    result = parse_text(text, "t.flow")
    errors = [d for d in result.diagnostics if d.is_error]
    assert len(errors) == 1, result.render()
    (error,) = errors
    assert not RAW_TOKEN.search(error.message), error.message
    return error.line, error.column, error.message


@pytest.mark.parametrize(
    ("mutate", "needle", "expect"),
    [
        (
            lambda t: t.replace("protocol   imap", "protocol   imapp"),
            "imapp",
            "did you mean 'imap'",
        ),
        (lambda t: t.replace("protocol", "protcol"), "protcol", "did you mean 'protocol'"),
        (lambda t: t.replace("sender mail", "sendr mail"), "sendr", "did you mean 'sender'"),
        (
            lambda t: t.replace("protection imaps", "protection imap"),
            "protection imap",
            "expected 'off'",
        ),
        (lambda t: t.replace('log info "x"', 'lgo info "x"'), "lgo", "did you mean 'log'"),
    ],
    ids=["value", "setting", "block", "protection", "step"],
)
def test_misspelled_keyword_or_value(mutate, needle: str, expect: str) -> None:  # type: ignore[no-untyped-def]
    text = mutate(flow(steps='log info "x"'))
    line, _, message = single_error(text)
    assert line == line_of(text, needle)
    assert expect in message


@pytest.mark.parametrize("value", ["30x", "5", "s", "1.5.3m", "-3s"])
def test_bad_duration(value: str) -> None:
    text = flow(sender_extra=f"timeout {value}")
    line, column, message = single_error(text)
    assert line == line_of(text, "timeout")
    assert "duration" in message and "30s" in message
    assert text.splitlines()[line - 1][column - 1 :].startswith(value)


def test_unterminated_string() -> None:
    text = flow(sender_extra='folder "INBOX')
    line, column, message = single_error(text)
    assert line == line_of(text, 'folder "INBOX')
    assert "unterminated string" in message
    assert text.splitlines()[line - 1][column - 1] == '"'


def test_unterminated_expression_points_at_the_dollar() -> None:
    text = flow(receiver_extra='subject "Re: ${header.Subject"')
    line, column, message = single_error(text)
    assert line == line_of(text, "subject")
    assert "unterminated '${'" in message
    assert text.splitlines()[line - 1][column - 1 : column + 1] == "${"


def test_missing_closing_brace_at_end_of_file() -> None:
    text = flow().rstrip().removesuffix("}")
    _line, _, message = single_error(text)
    assert "the file ends before '}' closes 'flow t {'" in message


def test_missing_closing_brace_of_a_block() -> None:
    text = flow(steps='log info "x"').replace(
        '        auth       plain credential "in"\n\n    }\n',
        '        auth plain credential "in"\n',
    )
    line, _, message = single_error(text)
    assert line == line_of(text, "pipeline {")
    assert "is its closing '}' missing" in message
    assert "sender mail {" in message


@pytest.mark.parametrize(
    ("mutate", "needle", "expect"),
    [
        (
            lambda t: t.replace("max-messages 5", 'max-messages "five"'),
            "max-messages",
            "expected a whole number",
        ),
        (lambda t: t.replace("timeout 5s", 'timeout "imap"'), "timeout", "bad duration"),
        (
            lambda t: t.replace('address    "imap.example.com"', "address    imap.example.com:x"),
            "address",
            "bad port",
        ),
        (lambda t: t.replace("poll every 1m", "poll every idle"), "poll", "bad duration"),
        (
            lambda t: t.replace('log info "x"', "log info header.Subject"),
            "log info",
            "expected a quoted string",
        ),
        (lambda t: t.replace('log info "x"', 'set header "A" "x"'), "set header", "expected '='"),
    ],
    ids=["int", "duration", "port", "poll", "log-text", "set-eq"],
)
def test_value_of_the_wrong_kind(mutate, needle: str, expect: str) -> None:  # type: ignore[no-untyped-def]
    text = mutate(
        flow(sender_extra="max-messages 5\ntimeout 5s\npoll every 1m", steps='log info "x"')
    )
    line, _, message = single_error(text)
    assert line == line_of(text, needle)
    assert expect in message


def test_not_utf8_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flowrt.dsl import parse_file

    path = tmp_path / "latin.flow"
    path.write_bytes(b'flow t {\n description "caf\xe9"\n}\n')
    result = parse_file(path)
    assert not result.ok
    assert result.diagnostics[0].code == "encoding"
    assert result.diagnostics[0].line == 2
