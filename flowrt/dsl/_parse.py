"""Text -> raw flow: the lark parser, a Transformer, and syntax errors said in words.

The raw flow keeps settings as written (values with positions); :mod:`flowrt.dsl.build`
reads them through the specs. Conditions are built into model objects here, because their
shape is fixed by the grammar; each step is built by its own module's transform, and the
grammar is the base file plus the step modules' rules (see :mod:`flowrt.engine.steps`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lark import Lark, Token, Transformer, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from flowrt.dsl import model as m
from flowrt.dsl.params import ParamUse, substitute
from flowrt.dsl.step_syntax import StepTransform
from flowrt.dsl.template import SpecError, parse_ref, parse_template, unescape
from flowrt.dsl.values import RawValue, did_you_mean

if TYPE_CHECKING:
    from flowrt.engine.steps import StepModule

_GRAMMAR_PATHS = (
    Path(__file__).resolve().parent / "flow.lark",
    Path(__file__).resolve().parents[2] / "grammar" / "flow.lark",
)

_T = TypeVar("_T")

_TERMINAL_WORDS = {
    "NAME": "a name",
    "REF": "a reference such as header.Subject",
    "NUMBER": "a number",
    "STRING": "a quoted string",
    "BARE": "a value",
    "_NL": "the end of the line",
    "$END": "the end of the file",
}


@functools.cache
def _steps() -> tuple[StepModule, ...]:
    # Imported here, not at the top: the step modules import the DSL model, and the DSL
    # package must be importable before them.
    from flowrt.engine.steps import MODULES

    return MODULES


def step_keywords() -> tuple[str, ...]:
    """The words a step line may start with, in the steps' order."""
    return tuple(step.keyword for step in _steps())


@functools.cache
def _step_transforms() -> dict[str, StepTransform]:
    return {rule: fn for step in _steps() for rule, fn in step.transforms.items()}


def grammar_text(steps: Sequence[StepModule] | None = None) -> str:
    """The base grammar plus every step module's rule and keywords; ``_step`` is generated."""
    for path in _GRAMMAR_PATHS:
        if path.is_file():
            base = path.read_text(encoding="utf-8")
            break
    else:  # pragma: no cover - a broken installation
        raise FileNotFoundError("grammar/flow.lark is missing from the installation")
    steps = _steps() if steps is None else steps
    keywords: dict[str, str] = {}
    for step in steps:
        for terminal, word in step.keywords.items():
            if keywords.setdefault(terminal, word) != word:
                raise RuntimeError(f"two steps define the keyword {terminal} differently")
    parts = [base, "// ------------------------------------------------------------------ steps"]
    parts.append("_step: " + "\n     | ".join(step.rule for step in steps))
    parts += [step.grammar for step in steps]
    parts += [f'{terminal}: "{word}"' for terminal, word in keywords.items()]
    return "\n".join(parts) + "\n"


@functools.cache
def parser() -> Lark:
    """Built once per process: building the LALR tables is the slow part."""
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=False,
        maybe_placeholders=False,
    )


# ----------------------------------------------------------------------------- raw tree


@dataclasses.dataclass(frozen=True)
class RawSetting:
    name: str
    values: tuple[RawValue, ...]
    pos: m.Pos


@dataclasses.dataclass(frozen=True)
class RawBlock:
    keyword: str
    args: tuple[RawValue, ...]
    settings: tuple[RawSetting, ...]
    pos: m.Pos


@dataclasses.dataclass(frozen=True)
class RawPipeline:
    steps: tuple[m.Step, ...]
    pos: m.Pos


@dataclasses.dataclass(frozen=True)
class RawFlow:
    name: str
    settings: tuple[RawSetting, ...]
    blocks: tuple[RawBlock, ...]
    pipelines: tuple[RawPipeline, ...]
    pos: m.Pos
    params: tuple[ParamUse, ...] = ()


class _SpecErrors(Exception):
    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors


class _ToRaw(Transformer[Token, list[RawFlow]]):
    """Builds the raw tree. Step-level value errors are collected, not raised, so that every
    bad step of a file is reported in one run."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file
        self.errors: list[SpecError] = []

    def pos(self, token: Token) -> m.Pos:
        return m.Pos(self.file, token.line or 1, token.column or 1)

    def guard(self, fn: Callable[..., _T], *args: Any) -> _T | None:
        try:
            return fn(*args)
        except SpecError as exc:
            self.errors.append(exc)
            return None

    def __default__(self, data: str, children: list[Any], meta: Any) -> Any:
        # A step's rule is transformed by its own module (flowrt.engine.steps.*).
        transform = _step_transforms().get(data)
        if transform is not None:
            return transform(self, children)
        return super().__default__(data, children, meta)  # type: ignore[no-untyped-call]

    # structure
    def start(self, flows: list[RawFlow]) -> list[RawFlow]:
        return flows

    def flow(self, items: list[Any]) -> RawFlow:
        keyword, name = items[0], items[1]
        body = items[3:-1]
        return RawFlow(
            name=str(name),
            settings=tuple(i for i in body if isinstance(i, RawSetting)),
            blocks=tuple(i for i in body if isinstance(i, RawBlock)),
            pipelines=tuple(i for i in body if isinstance(i, RawPipeline)),
            pos=self.pos(keyword),
        )

    def setting(self, items: list[Token]) -> RawSetting:
        name = items[0]
        values = tuple(RawValue.from_token(str(t), self.pos(t)) for t in items[1:])
        return RawSetting(str(name), values, self.pos(name))

    def block(self, items: list[Any]) -> RawBlock:
        keyword = items[0]
        brace = next(i for i, t in enumerate(items) if isinstance(t, Token) and t.type == "LBRACE")
        args = tuple(RawValue.from_token(str(t), self.pos(t)) for t in items[1:brace])
        settings = tuple(i for i in items[brace + 1 :] if isinstance(i, RawSetting))
        return RawBlock(str(keyword), args, settings, self.pos(keyword))

    def pipeline(self, items: list[Any]) -> RawPipeline:
        steps = tuple(i for i in items if not isinstance(i, Token) and i is not None)
        return RawPipeline(steps, self.pos(items[0]))

    # targets and fields
    def field(self, items: list[Token]) -> tuple[str, m.Pos] | None:
        token = items[0]
        text = unescape(str(token)[1:-1]) if token.type == "STRING" else str(token)
        if not text or any(c in text for c in " \t\r\n:"):
            self.errors.append(
                SpecError(
                    f"bad name {token!s}: a header or property name "
                    "has no spaces, colons or line breaks",
                    self.pos(token),
                )
            )
            return None
        return text, self.pos(token)

    def header_target(self, items: list[Any]) -> m.Target | None:
        return None if items[1] is None else m.Target("header", items[1][0])

    def property_target(self, items: list[Any]) -> m.Target | None:
        return None if items[1] is None else m.Target("property", items[1][0])

    def body_target(self, items: list[Token]) -> m.Target:
        return m.Target("body", "")

    # conditions
    def operand(self, items: list[Token]) -> m.Operand | None:
        return self.guard(self._operand, items[0])

    def _operand(self, token: Token) -> m.Operand:
        if token.type == "STRING":
            return parse_template(str(token), self.pos(token))
        if token.type == "NUMBER":
            return m.Template((str(token),), str(token), self.pos(token))
        return parse_ref(str(token), self.pos(token))

    def _compare(self, op: str, items: list[Any]) -> m.Compare | None:
        left, right = items[0], items[2]
        if left is None or right is None:
            return None
        return m.Compare(op, left, right, _pos_of(left))  # type: ignore[arg-type]

    def equals(self, items: list[Any]) -> m.Compare | None:
        return self._compare("=", items)

    def not_equals(self, items: list[Any]) -> m.Compare | None:
        return self._compare("!=", items)

    def contains(self, items: list[Any]) -> m.Compare | None:
        return self._compare("contains", items)

    def matches(self, items: list[Any]) -> m.Matches | None:
        operand, pattern_token = items[0], items[2]
        try:
            pattern = re.compile(unescape(str(pattern_token)[1:-1]))
        except re.error as exc:
            self.errors.append(
                SpecError(
                    f"bad regular expression {pattern_token}: {exc.msg}",
                    self.pos(pattern_token),
                    "bad-condition",
                )
            )
            return None
        if operand is None:
            return None
        return m.Matches(operand, pattern, _pos_of(operand))

    def exists(self, items: list[Any]) -> m.Exists | None:
        if items[0] is None:
            return None
        if not isinstance(items[0], m.Ref):
            self.errors.append(
                SpecError(
                    "exists needs a reference such as header.X, not a string",
                    _pos_of(items[0]),
                    "bad-condition",
                )
            )
            return None
        return m.Exists(items[0], _pos_of(items[0]))

    def negation(self, items: list[Any]) -> m.Not | None:
        return None if items[1] is None else m.Not(items[1], self.pos(items[0]))

    def group(self, items: list[Any]) -> m.Condition | None:
        result: m.Condition | None = items[1]
        return result

    def and_condition(self, items: list[Any]) -> m.And | None:
        parts = items[::2]
        if any(p is None for p in parts):
            return None
        return m.And(tuple(parts), _pos_of(parts[0]))

    def or_condition(self, items: list[Any]) -> m.Or | None:
        parts = items[::2]
        if any(p is None for p in parts):
            return None
        return m.Or(tuple(parts), _pos_of(parts[0]))


def _pos_of(node: Any) -> m.Pos:
    return node.pos  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- errors


@dataclasses.dataclass(frozen=True)
class SyntaxProblem:
    message: str
    pos: m.Pos


MAX_NESTING = 64  # parentheses and `not`s in one condition; deeper is a generated mistake
_NESTING_TOKEN = re.compile(r'"(?:\\.|[^"\\\n])*"?|#[^\n]*|\(|\)|\bnot\b|\n')


def _too_deep(text: str, file: str) -> SyntaxProblem | None:
    """The first place where a condition nests deeper than MAX_NESTING, if any. The
    parse tree is transformed recursively, so a deep one must be refused before that."""
    depth = nots = 0
    line, line_start = 1, 0
    for match in _NESTING_TOKEN.finditer(text):
        token = match.group()
        if token == "\n":
            line, line_start = line + 1, match.end()
            depth = nots = 0  # a condition ends with its line
            continue
        if token == "(":
            depth += 1
        elif token == ")":
            depth = max(0, depth - 1)
        elif token == "not":
            nots += 1
        else:
            nots = 0 if token.startswith("#") else nots
            continue
        if depth + nots > MAX_NESTING:
            return SyntaxProblem(
                f"this condition nests more than {MAX_NESTING} levels deep (parentheses and "
                "`not`); write it flatter",
                m.Pos(file, line, match.start() - line_start + 1),
            )
    return None


@dataclasses.dataclass
class RawParse:
    flows: list[RawFlow]
    problems: list[SpecError | SyntaxProblem]
    #: values holding a stand-in for a parameter (see flowrt.dsl.params.Substitution)
    stand_ins: list[tuple[int, int, int, str, str]] = dataclasses.field(default_factory=list)


def parse_raw(
    text: str, file: str, params: Mapping[str, Mapping[str, str]] | None = None
) -> RawParse:
    """Parse ``text``; a syntax error yields no flows and one problem said in words.

    ``params`` holds parameter values by flow name; a flow not in it (or no ``params``:
    ``flowrt validate``) has none to be had, so defaults or placeholders stand in.
    """
    deep = _too_deep(text, file)
    if deep is not None:
        return RawParse([], [deep])
    try:
        tree = parser().parse(text)
    except UnexpectedInput as exc:
        return RawParse([], [_explain(exc, text, file)])
    problems: list[SpecError | SyntaxProblem] = []
    stand_ins: list[tuple[int, int, int, str, str]] = []
    uses: dict[int, tuple[ParamUse, ...]] = {}
    for index, flow_tree in enumerate(tree.children):
        if not isinstance(flow_tree, Tree):
            continue
        name = str(flow_tree.children[1])
        values = None if params is None else params.get(name)
        found = substitute(flow_tree, file, values)
        problems.extend(found.errors)
        stand_ins.extend(found.stand_ins)
        uses[index] = tuple(sorted(found.uses, key=lambda use: (use.pos.line, use.pos.column)))
    to_raw = _ToRaw(file)
    flows = to_raw.transform(tree)
    flows = [
        dataclasses.replace(flow, params=uses.get(index, ())) for index, flow in enumerate(flows)
    ]
    problems.extend(to_raw.errors)
    return RawParse(flows, problems, stand_ins)


def _describe_expected(names: set[str]) -> str:
    words: list[str] = []
    lark = parser()
    for name in sorted(names):
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = lark.get_terminal(name).pattern
        except KeyError:
            continue
        if isinstance(pattern, PatternStr):
            words.append(f"'{pattern.value}'")
    words = sorted(set(words), key=lambda w: (not w.startswith("'"), w))
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _open_block(text: str, line: int, column: int) -> tuple[int, str] | None:
    """The innermost '{' still open at (line, column): its line number and text."""
    stack: list[tuple[int, str]] = []
    lines = text.splitlines()
    for number, content in enumerate(lines, start=1):
        cleaned = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', content)
        cleaned = cleaned.split("#", 1)[0]
        limit = column - 1 if number == line else len(cleaned)
        for ch in cleaned[:limit]:
            if ch == "{":
                stack.append((number, content.strip()))
            elif ch == "}" and stack:
                stack.pop()
        if number >= line:
            break
    return stack[-1] if stack else None


def _explain(exc: UnexpectedInput, text: str, file: str) -> SyntaxProblem:
    line = exc.line if exc.line and exc.line > 0 else max(1, text.count("\n"))
    column = exc.column if exc.column and exc.column > 0 else 1
    pos = m.Pos(file, line, column)
    if isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream or 0
        char = text[offset] if offset < len(text) else ""
        if char == '"':
            return SyntaxProblem(
                "unterminated string: the closing '\"' is missing on this line", pos
            )
        expected = _describe_expected(set(exc.allowed or ()))
        return SyntaxProblem(f"unexpected character {char!r}; expected {expected}", pos)
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        opened = _open_block(text, line + 1, 1)
        if opened:
            return SyntaxProblem(
                f"the file ends before '}}' closes '{opened[1]}' (line {opened[0]})",
                m.Pos(file, line, column),
            )
        return SyntaxProblem("unexpected end of the file", pos)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    expected_names = set(exc.expected)
    got = str(token)
    if token.type == "_NL":
        return SyntaxProblem(
            f"unexpected end of the line; expected {_describe_expected(expected_names)}", pos
        )
    keywords = step_keywords()
    if {word.upper() for word in keywords} <= expected_names:
        return SyntaxProblem(
            f"unknown step {got!r}; a step is one of {', '.join(keywords)}"
            + did_you_mean(got, keywords),
            pos,
        )
    if token.type in ("LBRACE", "PIPELINE"):
        opened = _open_block(text, line, column)
        if opened and opened[0] != line:
            return SyntaxProblem(
                f"a block cannot start inside '{opened[1]}' (line {opened[0]}): "
                "is its closing '}' missing?",
                pos,
            )
    if token.type == "RBRACE" and "EQ" in expected_names:
        return SyntaxProblem("expected '=' and a value", pos)
    return SyntaxProblem(f"unexpected {got!r}; expected {_describe_expected(expected_names)}", pos)
