"""Flow parameters: ``${param.NAME}`` / ``${param.NAME:default}`` in quoted strings, and
``param.NAME`` / ``param.NAME:default`` as a bare value or condition operand.

Parameters are replaced in the parse tree's tokens before anything reads them, so a
parameter may stand in any setting value, step value or condition, and every check (an
address's port, a duration's range ...) sees the value the flow will run with. A value is
literal text: a ``${...}`` inside a value is not an expression.

Without values (``flowrt validate`` alone) a parameter takes its default; one without a
default gets a placeholder, and a problem found in the value holding it is only a warning:
the value is checked at deploy, when the parameter has one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from lark import Token, Tree

from flowrt.dsl.model import ParamUse, Pos
from flowrt.dsl.template import SpecError

__all__ = [
    "NAME_HELP",
    "PARAM_CODES",
    "ParamUse",
    "Substitution",
    "is_secret_name",
    "name_problem",
    "substitute",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_USE = re.compile(r"param\.([^:]*)(?::(.*))?", re.DOTALL)
_BARE_SAFE = re.compile(r'[^\s"{}#]+')
_SECRET = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY", re.IGNORECASE)
NAME_HELP = "a letter or '_' followed by letters, digits and '_', e.g. SMTP_HOST"


def is_secret_name(name: str) -> bool:
    return _SECRET.search(name) is not None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a parameter name (None: it can)."""
    if not name:
        return f"the parameter name is empty: expected {NAME_HELP}"
    if not _NAME.fullmatch(name):
        return f"bad parameter name {name!r}: expected {NAME_HELP}"
    if is_secret_name(name):
        return (
            f"parameter {name} looks like a secret; secrets belong in the credential store "
            "(`flowrt credentials add NAME --password-stdin`), named in the flow with "
            'credential "NAME"'
        )
    return None


def _escape(value: str) -> str:
    """``value`` as the content of a quoted DSL string, read back as exactly ``value``."""
    return (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "\\$")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
    )


@dataclasses.dataclass
class Substitution:
    """What replacing the parameters of one flow found."""

    uses: list[ParamUse] = dataclasses.field(default_factory=list)
    errors: list[SpecError] = dataclasses.field(default_factory=list)
    #: values holding a stand-in for a parameter: (line, first column, last column, name,
    #: "unchecked" (no value yet: validate alone) or "failed" (the use is wrong, reported))
    stand_ins: list[tuple[int, int, int, str, str]] = dataclasses.field(default_factory=list)


PARAM_CODES = frozenset({"bad-parameter", "secret-parameter", "missing-parameter"})


class _Replacer:
    def __init__(self, file: str, values: Mapping[str, str] | None) -> None:
        self.file = file
        self.values = values
        self.found = Substitution()

    def _value(self, name: str, default: str | None, pos: Pos) -> tuple[str, str | None]:
        """The text for one use (escaped when it came from the flow itself) and, when it is
        a stand-in, why: "unchecked" (no value yet) or "failed" (the use is wrong, reported)."""
        problem = name_problem(name)
        if problem is not None:
            code = "secret-parameter" if _NAME.fullmatch(name) else "bad-parameter"
            self.found.errors.append(SpecError(problem, pos, code))
            return "param", "failed"
        self.found.uses.append(ParamUse(name, default, pos))
        if self.values is not None and name in self.values:
            return _escape(self.values[name]), None
        if default is not None:
            return default, None
        if self.values is not None:
            self.found.errors.append(
                SpecError(
                    f"parameter {name} has no value: set one with `flowrt params set FLOW "
                    f"{name} VALUE`, deploy --params FILE, or FLOWRT_PARAM_{name}",
                    pos,
                    "missing-parameter",
                )
            )
            return name, "failed"
        return name, "unchecked"

    def string(self, token: Token) -> Token:
        content = str(token)[1:-1]
        out: list[str] = []
        i = 0
        changed = False
        stand_in: tuple[str, str] | None = None
        while i < len(content):
            ch = content[i]
            if ch == "\\" and i + 1 < len(content):
                out.append(content[i : i + 2])
                i += 2
                continue
            if ch == "$" and content.startswith("${", i):
                end = content.find("}", i + 2)
                inner = content[i + 2 : end].strip() if end >= 0 else ""
                if inner == "param" or inner.startswith("param."):
                    name, colon, default = inner[len("param.") :].partition(":")
                    at = Pos(self.file, token.line or 1, (token.column or 1) + 1 + i + 8)
                    text, why = self._value(name.strip(), default if colon else None, at)
                    out.append(text)
                    if why is not None and (stand_in is None or why == "failed"):
                        stand_in = (name.strip(), why)
                    changed = True
                    i = end + 1
                    continue
            out.append(ch)
            i += 1
        if not changed:
            return token
        self._note(token, stand_in)
        return Token.new_borrow_pos("STRING", '"' + "".join(out) + '"', token)

    def bare(self, token: Token) -> Token:
        match = _BARE_USE.fullmatch(str(token))
        if match is None:
            return token
        name, default = match.group(1), match.group(2)
        pos = Pos(self.file, token.line or 1, (token.column or 1) + 6)
        text, why = self._value(name, default, pos)
        self._note(token, None if why is None else (name, why))
        value = _unescape_simple(text)
        if token.type == "BARE" and _BARE_SAFE.fullmatch(value):
            return Token.new_borrow_pos("BARE", value, token)
        return Token.new_borrow_pos("STRING", '"' + text + '"', token)

    def _note(self, token: Token, stand_in: tuple[str, str] | None) -> None:
        if stand_in is not None:
            first = token.column or 1
            last = token.end_column or first + len(str(token))
            self.found.stand_ins.append((token.line or 1, first, last, *stand_in))


def _unescape_simple(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def substitute(tree: Tree[Token], file: str, values: Mapping[str, str] | None) -> Substitution:
    """Replace every parameter in ``tree`` (one flow's subtree) in place."""
    replacer = _Replacer(file, values)
    for subtree in tree.iter_subtrees():
        for index, child in enumerate(subtree.children):
            if not isinstance(child, Token):
                continue
            if child.type == "STRING" and "${" in child:
                subtree.children[index] = replacer.string(child)
            elif child.type in ("BARE", "REF") and child.startswith("param."):
                subtree.children[index] = replacer.bare(child)
    return replacer.found
