"""The stages of a connectivity test and its verdict, as text or JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flowrt.connectivity.chain import CertInfo
from flowrt.errors import FlowrtError, chain_levels, find_hint, library_cause, render_chain


@dataclasses.dataclass
class Stage:
    name: str
    ok: bool
    summary: str
    details: list[str] = dataclasses.field(default_factory=list)

    def render(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        lines = [f"  {self.name:<13} {mark:<6} {self.summary}".rstrip()]
        lines += [f"  {'':<13} {'':<6} {d}" for d in self.details]
        return "\n".join(lines)


class ConnectivityReport:
    """Collects stages; ``on_stage`` shows each one as soon as it is known."""

    def __init__(self, title: str, on_stage: Callable[[Stage], None] | None = None) -> None:
        self.title = title
        self.stages: list[Stage] = []
        self.chain: list[CertInfo] = []
        self.error: FlowrtError | None = None
        self.imported: list[str] = []
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}  # what was found: folders, mailbox counts
        self._on_stage = on_stage

    def stage(
        self, name: str, summary: str, details: list[str] | None = None, *, ok: bool = True
    ) -> None:
        stage = Stage(name, ok, summary, details or [])
        self.stages.append(stage)
        if self._on_stage:
            self._on_stage(stage)

    def fail(self, name: str, exc: FlowrtError) -> None:
        self.error = exc
        root_cause = chain_levels(exc)[-1].message  # what went wrong, not where
        self.stage(name, root_cause.splitlines()[0], ok=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def verdict(self) -> str:
        if self.ok:
            return f"verdict: OK: {self.title}"
        assert self.error is not None
        return f"verdict: FAILED: {self.title}: {chain_levels(self.error)[-1].message}"

    def render_failure(self, *, debug: bool = False) -> str:
        """The chain and its hint; with ``debug`` also the library's own exception, which
        the chain never shows (it is for a bug report, not for the operator)."""
        if self.error is None:
            return ""
        text = render_chain(self.error)
        hint = find_hint(self.error)
        cause = library_cause(self.error) if debug else None
        return (
            text
            + (f"\nhint: {hint}" if hint else "")
            + (f"\nlibrary cause: {cause}" if cause else "")
        )

    def to_dict(self, *, debug: bool = False) -> dict[str, Any]:
        return {
            "test": self.title,
            "ok": self.ok,
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "chain": [c.to_dict() for c in self.chain],
            "imported": self.imported,
            "notes": self.notes,
            "results": self.results,
            "error": None
            if self.error is None
            else {
                "chain": render_chain(self.error),
                "levels": [lv.to_dict() for lv in chain_levels(self.error)],
                "hint": find_hint(self.error),
                **({"library_cause": library_cause(self.error)} if debug else {}),
            },
        }
