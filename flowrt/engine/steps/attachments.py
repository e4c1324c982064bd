"""``attachments keep|drop "GLOB"``: narrow the message's attachments by name."""

from __future__ import annotations

import fnmatch
import re

from flowrt.dsl.model import AttachmentsStep
from flowrt.dsl.spec import StepSpec
from flowrt.engine.compiled import CompileContext, CompiledStep, MessageLog, line_of
from flowrt.engine.exchange import Exchange

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
