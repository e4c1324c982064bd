"""Strings with ``${...}`` expressions, and references to parts of the exchange.

Parsed once, when the flow is loaded; positions point into the flow file so that an
unterminated ``${`` or an unknown reference is shown with a caret under it.
"""

from __future__ import annotations

import datetime as dt

from flowrt.dsl.model import Pos, Ref, Template

_MESSAGE_FIELDS = ("id", "correlation-id", "timestamp")
_FLOW_FIELDS = ("name", "version")
_ATTACHMENT_FIELDS = ("name", "type", "size", "index")
# Built from the field lists so that errors, and the README (a test compares), name them all.
REFERENCE_HELP = ", ".join(
    [
        "header.NAME",
        "property.NAME",
        "body",
        "body.html",
        *(f"message.{f}" for f in _MESSAGE_FIELDS),
        *(f"flow.{f}" for f in _FLOW_FIELDS),
        f"attachment.{'|'.join(_ATTACHMENT_FIELDS)} (in a split branch)",
        "date:now or date:now:FORMAT (strftime)",
    ]
)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "$": "$"}


class SpecError(Exception):
    """A value that is wrong, where it is, and a stable code for it."""

    def __init__(self, message: str, pos: Pos, code: str = "bad-value") -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.code = code


def unescape(content: str) -> str:
    r"""``\"``, ``\\``, ``\n``, ``\t`` and ``\$`` are escapes; any other backslash stays, so
    that regular expressions such as ``"\d+"`` mean what they say."""
    out: list[str] = []
    i = 0
    while i < len(content):
        ch = content[i]
        if ch == "\\" and i + 1 < len(content) and content[i + 1] in _ESCAPES:
            out.append(_ESCAPES[content[i + 1]])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_ref(text: str, pos: Pos) -> Ref:
    """``header.Subject``, ``property.x``, ``body``, ``message.id``, ``date:now:%Y``..."""
    text = text.strip()
    if text == "body":
        return Ref("body", "", pos)
    if text == "body.html":
        return Ref("body", "html", pos)
    if text == "date:now" or text.startswith("date:now:"):
        fmt = text[len("date:now:") :] if text.startswith("date:now:") else ""
        if fmt:
            try:
                dt.datetime(2000, 1, 1).strftime(fmt)
            except ValueError as exc:
                raise SpecError(f"bad date format {fmt!r}: {exc}", pos, "bad-expression") from None
        return Ref("date", fmt, pos)
    root, dot, name = text.partition(".")
    if not dot or not name:
        raise SpecError(
            f"unknown expression {text!r}: expected {REFERENCE_HELP}", pos, "bad-expression"
        )
    if root in ("header", "property"):
        return Ref(root, name, pos)  # type: ignore[arg-type]
    allowed = {"message": _MESSAGE_FIELDS, "flow": _FLOW_FIELDS, "attachment": _ATTACHMENT_FIELDS}
    if root in allowed:
        if name not in allowed[root]:
            fields = ", ".join(f"{root}.{f}" for f in allowed[root])
            raise SpecError(
                f"unknown expression {text!r}: {root} has {fields}", pos, "bad-expression"
            )
        return Ref(root, name, pos)  # type: ignore[arg-type]
    raise SpecError(
        f"unknown expression {text!r}: expected {REFERENCE_HELP}", pos, "bad-expression"
    )


def parse_template(raw: str, pos: Pos) -> Template:
    """Parse a quoted string token (``raw`` includes its quotes) into literal parts and refs."""
    content = raw[1:-1]
    parts: list[str | Ref] = []
    literal: list[str] = []
    i = 0
    while i < len(content):
        ch = content[i]
        if ch == "\\" and i + 1 < len(content) and content[i + 1] in _ESCAPES:
            literal.append(_ESCAPES[content[i + 1]])
            i += 2
            continue
        if ch == "$" and content.startswith("${", i):
            at = Pos(pos.file, pos.line, pos.column + 1 + i)
            end = content.find("}", i + 2)
            if end < 0:
                raise SpecError(
                    "unterminated '${': missing '}' before the end of the string",
                    at,
                    "bad-expression",
                )
            inner = content[i + 2 : end]
            if not inner.strip():
                raise SpecError("empty expression '${}'", at, "bad-expression")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(parse_ref(inner, at))
            i = end + 1
            continue
        literal.append(ch)
        i += 1
    if literal or not parts:
        parts.append("".join(literal))
    return Template(tuple(parts), raw, pos)
