"""One step = one module: every module under flowrt/engine/steps/ is found, its rule is in
the parser's grammar, and a new module is all a new step needs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lark import Lark

import flowrt.engine.steps as steps_package
from flowrt.dsl._parse import grammar_text, parser, step_keywords
from flowrt.engine.steps import COMPILERS, MODULES, SPECS, step_modules

STEPS_DIR = Path(steps_package.__file__).parent
FILES = sorted(p.stem for p in STEPS_DIR.glob("*.py") if not p.stem.startswith("_"))

SHOUT = """
import dataclasses
from typing import Any, Literal

from flowrt.dsl.model import Pos
from flowrt.dsl.spec import StepSpec
from flowrt.engine.compiled import CompiledStep, line_of


@dataclasses.dataclass(frozen=True)
class ShoutStep:
    text: str
    pos: Pos
    kind: Literal["shout"] = "shout"


SPEC = StepSpec(name="shout", syntax='shout "TEXT"', summary="Shouts.", example='shout "hi"')
GRAMMAR = "shout_step: SHOUT STRING _NL"
KEYWORDS = {"SHOUT": "shout"}
ORDER = 1000
TRANSFORMS = {"shout_step": lambda tree, items: ShoutStep(str(items[1]), tree.pos(items[0]))}


def compile(step: Any, ctx: Any) -> CompiledStep:
    return CompiledStep(lambda ex, log: None, "shout", line_of(step.pos))
"""


def test_every_step_module_is_registered() -> None:
    registered = sorted(step.module.__name__.rsplit(".", 1)[1] for step in MODULES)
    assert registered == FILES
    assert set(SPECS) == set(COMPILERS) == {step.kind for step in MODULES}


@pytest.mark.parametrize("name", FILES)
def test_each_module_rule_is_in_the_built_grammar(name: str) -> None:
    step = next(s for s in MODULES if s.module.__name__.endswith(f".{name}"))
    text = grammar_text()
    assert step.grammar in text
    assert f"| {step.rule}" in text or f"_step: {step.rule}" in text
    for terminal, word in step.keywords.items():
        assert f'{terminal}: "{word}"' in text
    assert parser().get_terminal(step.keyword.upper()) is not None


def test_the_parser_is_built_once() -> None:
    assert parser() is parser()


def test_step_keywords_follow_the_modules() -> None:
    assert step_keywords() == (
        "set",
        "remove",
        "filter",
        "route",
        "split",
        "script",
        "log",
        "mpl",
        "attachments",
    )


def test_a_new_step_is_one_new_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shout.py").write_text(SHOUT, encoding="utf-8")
    monkeypatch.setattr(steps_package, "__path__", [*steps_package.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "flowrt.engine.steps.shout", raising=False)
    found = step_modules()
    assert found[-1].kind == "shout" and found[-1].rule == "shout_step"
    lark = Lark(grammar_text(found), parser="lalr", lexer="contextual")
    tree = lark.parse(
        'flow f {\n    pipeline {\n        shout "hi"\n        set body = "x"\n    }\n}\n'
    )
    rules = [t.data for t in tree.iter_subtrees_topdown()]
    assert "shout_step" in rules and "set_step" in rules
    sys.modules.pop("flowrt.engine.steps.shout", None)
