"""Small builders for flow texts in tests."""

from __future__ import annotations

from flowrt.dsl import ParseResult, parse_text

SENDER = """    sender mail {
        protocol   imap
        address    "imap.example.com"
        protection imaps
        auth       plain credential "in"
%s
    }
"""
RECEIVER = """    receiver mail out {
        address    "smtp.example.com"
        protection smtps
        from       "a@example.com"
        to         "b@example.com"
%s
    }
"""


def flow(
    sender_extra: str = "",
    steps: str = "",
    receiver_extra: str = "",
    flow_extra: str = "",
    sender: str | None = None,
    tail: str = "",
) -> str:
    """A valid flow with lines added to the sender, pipeline, receiver or flow."""
    sender_block = sender if sender is not None else SENDER % _indent(sender_extra)
    pipeline = f"    pipeline {{\n{_indent(steps)}\n    }}\n" if steps else ""
    return (
        f"flow t {{\n{_indent(flow_extra, 4)}\n{sender_block}{pipeline}"
        f"{RECEIVER % _indent(receiver_extra)}{tail}}}\n"
    )


def _indent(text: str, by: int = 8) -> str:
    return "\n".join(" " * by + line.strip() for line in text.strip().splitlines())


def parse(text: str) -> ParseResult:
    return parse_text(text, "t.flow")


def errors(text: str) -> list[tuple[int, str, str]]:
    """(line, code, message) of each error."""
    return [(d.line, d.code, d.message) for d in parse(text).diagnostics if d.is_error]


def warnings(text: str) -> list[tuple[int, str, str]]:
    return [(d.line, d.code, d.message) for d in parse(text).diagnostics if not d.is_error]


def only_flow(text: str):  # type: ignore[no-untyped-def]
    result = parse(text)
    assert result.ok, result.render()
    (parsed,) = result.flows
    return parsed


def line_of(text: str, needle: str) -> int:
    """The 1-based number of the first line of ``text`` that contains ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)
