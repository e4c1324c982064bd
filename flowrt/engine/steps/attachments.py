"""``attachments keep|drop "GLOB"``: narrow the message's attachments by name."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="attachments",
    syntax='attachments keep|drop "GLOB"',
    summary="Keeps only the attachments whose name matches GLOB, or drops those that match "
    "(case-insensitive shell patterns such as *.pdf).",
    example='attachments keep "*.pdf"',
)
