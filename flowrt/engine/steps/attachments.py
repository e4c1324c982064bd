"""``attachments keep|drop "GLOB"``: narrow the message's attachments by name."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Literal

from flowrt.dsl.model import Pos
from flowrt.dsl.spec import StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.dsl.template import SpecError, unescape
from flowrt.dsl.values import did_you_mean
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange

__all__ = ["GRAMMAR", "KEYWORDS", "ORDER", "SPEC", "TRANSFORMS", "AttachmentsStep", "compile"]


@dataclasses.dataclass(frozen=True)
class AttachmentsStep:
    action: Literal["keep", "drop"]
    glob: str
    pos: Pos
    kind: Literal["attachments"] = "attachments"


GRAMMAR = "attachments_step: ATTACHMENTS NAME STRING _NL"
KEYWORDS = {"ATTACHMENTS": "attachments"}
ORDER = 90


def _attachments(tree: TreeBuilder, items: list[Any]) -> AttachmentsStep:
    action = str(items[1])
    if action not in ("keep", "drop"):
        raise SpecError(
            f"attachments: expected 'keep' or 'drop', got {action!r}"
            + did_you_mean(action, ["keep", "drop"]),
            tree.pos(items[1]),
        )
    glob = unescape(str(items[2])[1:-1])
    if not glob:
        raise SpecError(
            'attachments: the name pattern is empty (use "*" for all)', tree.pos(items[2])
        )
    return AttachmentsStep(action, glob, tree.pos(items[0]))  # type: ignore[arg-type]


def _attachments_step(tree: TreeBuilder, items: list[Any]) -> AttachmentsStep | None:
    return tree.guard(_attachments, tree, items)


TRANSFORMS: dict[str, StepTransform] = {"attachments_step": _attachments_step}


SPEC = StepSpec(
    name="attachments",
    syntax='attachments keep|drop "GLOB"',
    summary="Keeps only the attachments whose name matches GLOB, or drops those that match "
    "(case-insensitive shell patterns such as *.pdf). The inline parts the HTML shows "
    "(cid: images) are not attachments and stay.",
    example='attachments keep "*.pdf"',
)


def compile(step: AttachmentsStep, ctx: CompileContext) -> CompiledStep:
    # Case-insensitive on every platform: mail clients write INVOICE.PDF as often as invoice.pdf.
    matches = re.compile(fnmatch.translate(step.glob), re.IGNORECASE | re.DOTALL).match
    keep = step.action == "keep"

    def run(ex: Exchange, log: MessageLog) -> None:
        kept = [a for a in ex.attachments if (matches(a.name) is not None) is keep]
        ex.attachments = kept
        if ex.attachment is not None and ex.attachment not in kept:
            ex.attachment = None  # a split branch whose attachment was just dropped

    return CompiledStep(run, f'attachments {step.action} "{step.glob}"', line_of(step.pos))
