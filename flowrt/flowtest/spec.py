"""The flow test file format (``FLOW.flow.test.toml``) and its reader.

```toml
flow = "mail.flow"                 # default: this file's name without .test.toml
name = "invoice-forward"           # which flow, when the file holds several
[params]                           # parameter values (only these and the flow's defaults)
SMTP_HOST = "smtp.test"

[[case]]
name = "an invoice goes to accounting"
message = "mails/invoice.eml"      # or an inline [case.mail]
[case.mail]
from = "a@example.com"
subject = "Invoice 42"
body = "..."
attachments = [{ name = "a.pdf", type = "application/pdf", content = "%PDF-1.4" }]
[case.expect]
status = "COMPLETED"
receivers = ["accounting"]         # exactly these receivers got a mail
[[case.expect.mail]]
receiver = "accounting"
subject = "Fwd: Invoice 42"
```
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flowrt.errors import FlowError, UsageError
from flowrt.mpl.model import MplStatus

__all__ = ["Case", "Expectation", "ExpectedMail", "InlineMail", "TestFile", "read_test_file"]

SUFFIX = ".test.toml"
_STATUSES = [s.value for s in MplStatus]


@dataclasses.dataclass(frozen=True)
class InlineAttachment:
    name: str
    content_type: str
    content: bytes


@dataclasses.dataclass(frozen=True)
class InlineMail:
    headers: tuple[tuple[str, str], ...]
    body: str
    html: str | None
    attachments: tuple[InlineAttachment, ...]


@dataclasses.dataclass(frozen=True)
class ExpectedMail:
    receiver: str | None
    sender: str | None
    to: tuple[str, ...] | None
    subject: str | None
    headers: Mapping[str, str]
    body: tuple[str, ...]  # fragments the body holds
    attachments: tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class Expectation:
    status: str | None
    receivers: tuple[str, ...] | None
    mails: int | None
    error: str | None
    note: str | None
    properties: Mapping[str, str]
    mail: tuple[ExpectedMail, ...]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    line: int
    message: Path | None
    mail: InlineMail | None
    headers: tuple[tuple[str, str], ...]
    properties: tuple[tuple[str, str], ...]
    expect: Expectation


@dataclasses.dataclass(frozen=True)
class TestFile:
    path: Path
    flow: Path
    flow_name: str | None
    params: Mapping[str, str]
    cases: tuple[Case, ...]


class _Problem(Exception):
    def __init__(self, key: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.key = tuple(key)
        self.message = message


class _Locator:
    """Where a key was written (tomllib keeps no positions): its case's lines, then the
    first line naming the key."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.cases = [
            i for i, line in enumerate(self.lines) if re.match(r"\s*\[\[\s*case\s*\]\]", line)
        ]

    def find(self, key: Sequence[str | int]) -> tuple[int, int]:
        start, end = 0, len(self.lines)
        if len(key) >= 2 and key[0] == "case" and isinstance(key[1], int):
            if key[1] < len(self.cases):
                start = self.cases[key[1]]
                nxt = key[1] + 1
                end = self.cases[nxt] if nxt < len(self.cases) else len(self.lines)
            names = [k for k in key[2:] if isinstance(k, str)]
        else:
            names = [k for k in key if isinstance(k, str)]
            end = self.cases[0] if self.cases else end
        for name in reversed(names):
            pattern = re.compile(r'(?:^|[\s{,.\[])"?' + re.escape(name) + r'"?\s*(=|\]|\.)')
            for i in range(start, end):
                match = pattern.search(self.lines[i])
                if match:
                    return i + 1, self.lines[i].find(name, match.start()) + 1
        return start + 1, 1


def _str(value: Any, key: list[str | int], what: str = "a string") -> str:
    if not isinstance(value, str):
        raise _Problem(key, f"{key[-1]}: expected {what}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _str_table(value: Any, key: list[str | int]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Problem(key, f'{key[-1]}: expected a table of NAME = "value", got {_kind(value)}')
    out = {}
    for name, item in value.items():
        if isinstance(item, bool | int | float) and not isinstance(item, bool):
            item = str(item)
        out[name] = _str(item, [*key, name])
    return out


def _str_list(value: Any, key: list[str | int]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise _Problem(key, f"{key[-1]}: expected a list of strings, got {_kind(value)}")
    return tuple(_str(item, [*key, i]) for i, item in enumerate(value))


def _only(table: dict[str, Any], allowed: Sequence[str], key: list[str | int]) -> None:
    for name in table:
        if name not in allowed:
            where = ".".join(str(k) for k in key if isinstance(k, str)) or "the file"
            raise _Problem(
                [*key, name],
                f"unknown key {name!r} in {where}; expected one of {', '.join(allowed)}",
            )


def _table(value: Any, key: list[str | int]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Problem(key, f"{key[-1]}: expected a table, got {_kind(value)}")
    return value


_MAIL_KEYS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "headers",
    "body",
    "html",
    "attachments",
)


def _inline_mail(value: Any, key: list[str | int], folder: Path) -> InlineMail:
    table = _table(value, key)
    _only(table, _MAIL_KEYS, key)
    headers: list[tuple[str, str]] = []
    for name in ("from", "to", "cc", "subject", "date", "message-id"):
        if name in table:
            headers.append(
                (
                    name.title() if name != "message-id" else "Message-ID",
                    _str(table[name], [*key, name]),
                )
            )
    headers += list(_str_table(table.get("headers", {}), [*key, "headers"]).items())
    attachments = []
    items = table.get("attachments", [])
    if not isinstance(items, list):
        raise _Problem([*key, "attachments"], "attachments: expected a list of tables")
    for i, item in enumerate(items):
        akey: list[str | int] = [*key, "attachments", i]
        entry = _table(item, akey)
        _only(entry, ("name", "type", "content", "file"), akey)
        if "name" not in entry:
            raise _Problem([*key, "attachments"], "an attachment needs a name")
        if ("content" in entry) == ("file" in entry):
            raise _Problem(
                [*key, "attachments"], 'an attachment has content = "..." or file = "PATH"'
            )
        if "file" in entry:
            path = folder / _str(entry["file"], [*akey, "file"])
            try:
                content = path.read_bytes()
            except OSError:
                raise _Problem([*akey, "file"], f"file: cannot read {path}") from None
        else:
            content = _str(entry["content"], [*akey, "content"]).encode("utf-8")
        attachments.append(
            InlineAttachment(
                _str(entry["name"], [*akey, "name"]),
                _str(entry.get("type", "application/octet-stream"), [*akey, "type"]),
                content,
            )
        )
    html = table.get("html")
    return InlineMail(
        tuple(headers),
        _str(table.get("body", ""), [*key, "body"]),
        None if html is None else _str(html, [*key, "html"]),
        tuple(attachments),
    )


_EXPECT_KEYS = ("status", "receivers", "mails", "error", "note", "properties", "mail")
_EXPECTED_MAIL_KEYS = ("receiver", "from", "to", "subject", "headers", "body", "attachments")


def _expected_mail(value: Any, key: list[str | int]) -> ExpectedMail:
    table = _table(value, key)
    _only(table, _EXPECTED_MAIL_KEYS, key)
    get = table.get
    return ExpectedMail(
        receiver=None if get("receiver") is None else _str(get("receiver"), [*key, "receiver"]),
        sender=None if get("from") is None else _str(get("from"), [*key, "from"]),
        to=None if get("to") is None else _str_list(get("to"), [*key, "to"]),
        subject=None if get("subject") is None else _str(get("subject"), [*key, "subject"]),
        headers=_str_table(get("headers", {}), [*key, "headers"]),
        body=_str_list(get("body", []), [*key, "body"]),
        attachments=None
        if get("attachments") is None
        else _str_list(get("attachments"), [*key, "attachments"]),
    )


def _expect(value: Any, key: list[str | int]) -> Expectation:
    table = _table(value, key)
    _only(table, _EXPECT_KEYS, key)
    status = table.get("status")
    if status is not None:
        status = _str(status, [*key, "status"]).upper()
        if status not in _STATUSES:
            raise _Problem(
                [*key, "status"], f"status: expected one of {', '.join(_STATUSES)}, got {status}"
            )
    mails = table.get("mails")
    if mails is not None and (not isinstance(mails, int) or isinstance(mails, bool) or mails < 0):
        raise _Problem([*key, "mails"], f"mails: expected a number of mails, got {_kind(mails)}")
    items = table.get("mail", [])
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise _Problem([*key, "mail"], "mail: expected [[case.expect.mail]] tables")
    return Expectation(
        status=status,
        receivers=None
        if table.get("receivers") is None
        else _str_list(table["receivers"], [*key, "receivers"]),
        mails=mails,
        error=None if table.get("error") is None else _str(table["error"], [*key, "error"]),
        note=None if table.get("note") is None else _str(table["note"], [*key, "note"]),
        properties=_str_table(table.get("properties", {}), [*key, "properties"]),
        mail=tuple(_expected_mail(item, [*key, "mail", i]) for i, item in enumerate(items)),
    )


_CASE_KEYS = ("name", "message", "mail", "headers", "properties", "expect")


def _case(value: Any, index: int, folder: Path, line: int) -> Case:
    key: list[str | int] = ["case", index]
    table = _table(value, key)
    _only(table, _CASE_KEYS, key)
    if "name" not in table:
        raise _Problem(key, 'a case needs a name: name = "what it shows"')
    if ("message" in table) == ("mail" in table):
        raise _Problem(
            key, 'a case needs its input: message = "FILE.eml" or a [case.mail] table (one)'
        )
    if "expect" not in table:
        raise _Problem(key, "a case needs a [case.expect] table: what must come out")
    message = None
    if "message" in table:
        message = folder / _str(table["message"], [*key, "message"])
        if not message.is_file():
            raise _Problem([*key, "message"], f"message: no such file {message}")
    return Case(
        name=_str(table["name"], [*key, "name"]),
        line=line,
        message=message,
        mail=None if "mail" not in table else _inline_mail(table["mail"], [*key, "mail"], folder),
        headers=tuple(_str_table(table.get("headers", {}), [*key, "headers"]).items()),
        properties=tuple(_str_table(table.get("properties", {}), [*key, "properties"]).items()),
        expect=_expect(table["expect"], [*key, "expect"]),
    )


def default_flow(path: Path) -> Path:
    name = path.name
    return path.with_name(name[: -len(SUFFIX)]) if name.endswith(SUFFIX) else path


def read_test_file(path: str | Path) -> TestFile:
    """Read a flow test file; a FlowError at file:line:col saying what was expected."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise FlowError(f"{path}:1:1: the test file is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{match.group(1)}:{match.group(2)}" if match else "1:1"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise FlowError(
            f"{path}:{where}: {message[:1].lower()}{message[1:]} (a flow test file is TOML)"
        ) from None
    locator = _Locator(text)
    folder = path.parent
    try:
        _only(data, ("flow", "name", "params", "case"), [])
        flow = folder / _str(data["flow"], ["flow"]) if "flow" in data else default_flow(path)
        if flow == path or not flow.is_file():
            raise _Problem(["flow"], f'flow: no flow file {flow} (flow = "FILE.flow")')
        cases = data.get("case", [])
        if not isinstance(cases, list) or not cases:
            raise _Problem(
                [], "the file has no [[case]]: each case names an input and what to expect"
            )
        return TestFile(
            path=path,
            flow=flow,
            flow_name=None if "name" not in data else _str(data["name"], ["name"]),
            params=_str_table(data.get("params", {}), ["params"]),
            cases=tuple(
                _case(case, i, folder, locator.find(["case", i])[0]) for i, case in enumerate(cases)
            ),
        )
    except _Problem as problem:
        line, column = locator.find(problem.key)
        raise FlowError(f"{path}:{line}:{column}: {problem.message}") from None
