"""What a step module gives the parser, and what the parser gives a step's transform.

A step module under :mod:`flowrt.engine.steps` carries its own syntax: ``GRAMMAR`` (its lark
rule, e.g. ``'set_step: SET target EQ operand _NL'``), ``KEYWORDS`` (the keyword terminals
only it uses, e.g. ``{"SET": "set"}``) and ``TRANSFORMS`` (rule or alias name -> a function
that turns the rule's children into the step's model). The parser joins these to the base
grammar (``grammar/flow.lark``: structure, targets, conditions, operands, shared keywords).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from lark import Token

from flowrt.dsl.model import Pos

__all__ = ["StepTransform", "TreeBuilder"]

_T = TypeVar("_T")


class TreeBuilder(Protocol):
    """The parser's side: positions, and value errors collected instead of raised so that
    every bad step of a file is reported in one run."""

    def pos(self, token: Token) -> Pos: ...

    def guard(self, fn: Callable[..., _T], *args: Any) -> _T | None: ...


#: children of the rule (lark tokens and already transformed subtrees) -> the model step, or
#: None when a part was wrong (the error is already collected)
StepTransform = Callable[[TreeBuilder, list[Any]], Any]
