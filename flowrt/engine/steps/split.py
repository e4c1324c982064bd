"""``split attachments``: one branch per attachment."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from flowrt.dsl.model import Pos
from flowrt.dsl.spec import StepSpec
from flowrt.dsl.step_syntax import StepTransform, TreeBuilder
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, Split, line_of
from flowrt.engine.exchange import Exchange

__all__ = ["GRAMMAR", "KEYWORDS", "ORDER", "SPEC", "TRANSFORMS", "SplitStep", "compile"]


@dataclasses.dataclass(frozen=True)
class SplitStep:
    pos: Pos
    kind: Literal["split"] = "split"


GRAMMAR = "split_step: SPLIT ATTACHMENTS _NL"
KEYWORDS = {"SPLIT": "split", "ATTACHMENTS": "attachments"}
ORDER = 50


def _split_step(tree: TreeBuilder, items: list[Any]) -> SplitStep:
    return SplitStep(tree.pos(items[0]))


TRANSFORMS: dict[str, StepTransform] = {"split_step": _split_step}


SPEC = StepSpec(
    name="split",
    syntax="split attachments",
    summary="Continues with one branch per attachment: each branch carries one attachment "
    "(${attachment.name}, ${attachment.type}) and is recorded with its branch ID in the MPL. "
    "A message without attachments completes here. The inline parts the HTML shows (cid: "
    "images) are not attachments: they go with every branch.",
    example="split attachments",
)


def compile(step: SplitStep, ctx: CompileContext) -> CompiledStep:
    nothing = Split((), "no attachments: nothing to split, nothing is sent")

    def run(ex: Exchange, log: MessageLog) -> Split:
        attachments = ex.attachments
        if not attachments:
            return nothing
        prefix = f"{ex.branch}/" if ex.branch else ""
        branches = []
        for index, attachment in enumerate(attachments, 1):
            branch = ex.copy()
            branch.attachments = [attachment]
            branch.attachment = attachment
            branch.branch = f"{prefix}attachment-{index}"
            branches.append(branch)
        count = len(branches)
        return Split(tuple(branches), f"{count} branch{'es' * (count != 1)}")

    return CompiledStep(run, "split attachments", line_of(step.pos))
