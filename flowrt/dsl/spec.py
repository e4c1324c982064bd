"""Specs: what a block accepts, what a setting's values look like, what a step does.

A spec drives three things from one place: reading and checking the flow (the validator),
the DSL reference in the README (a test keeps it in sync), and the defaults the runtime sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flowrt.dsl.diagnostics import Diagnostic, Severity
from flowrt.dsl.model import Pos
from flowrt.dsl.values import ValueReader

__all__ = ["BlockSpec", "Report", "SettingSpec", "Settings", "StepSpec"]


class Report:
    """Collects every problem of a file, so that all of them are shown in one run."""

    def __init__(self, adjust: Callable[[Diagnostic], Diagnostic | None] | None = None) -> None:
        self.diagnostics: list[Diagnostic] = []
        # may turn a problem into a warning or drop it (values holding a parameter stand-in)
        self._adjust = adjust

    def add(self, pos: Pos, code: str, message: str, severity: Severity = "error") -> None:
        diagnostic: Diagnostic | None = Diagnostic.at(pos, code, message, severity)
        if self._adjust is not None and diagnostic is not None:
            diagnostic = self._adjust(diagnostic)
        if diagnostic is not None:
            self.diagnostics.append(diagnostic)

    def error(self, pos: Pos, code: str, message: str) -> None:
        self.add(pos, code, message, "error")

    def warning(self, pos: Pos, code: str, message: str) -> None:
        self.add(pos, code, message, "warning")


@dataclasses.dataclass(frozen=True)
class SettingSpec:
    """One setting: its name, the shape of its values in words, and how to read them."""

    name: str
    syntax: str
    summary: str
    parse: Callable[[ValueReader], Any]
    default: str | None = None
    repeatable: bool = False
    example: str | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    """The settings of one block as read: values by name, and where each was written."""

    values: Mapping[str, Any]
    positions: Mapping[str, Pos]
    pos: Pos
    failed: frozenset[str] = frozenset()  # written, but the value was wrong (reported)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def written(self, name: str) -> bool:
        return name in self.positions

    def where(self, name: str) -> Pos:
        return self.positions.get(name, self.pos)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A block (``sender mail { ... }``): its settings, the required ones, and a builder.

    ``build`` turns the read settings into a model object, reporting cross-setting problems;
    it returns None when the block cannot be built (a required setting failed).
    """

    keyword: str
    adapter: str | None
    summary: str
    settings: tuple[SettingSpec, ...]
    required: tuple[str, ...]
    build: Callable[[Settings, tuple[str, ...], Report], Any]
    example: str = ""

    def setting(self, name: str) -> SettingSpec | None:
        for spec in self.settings:
            if spec.name == name:
                return spec
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """A pipeline step: its syntax and meaning for the reference, and its load-time check."""

    name: str
    syntax: str
    summary: str
    example: str
    check: Callable[[Any, Any, Report], None] | None = None
