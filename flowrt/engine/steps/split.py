"""``split attachments``: one branch per attachment."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="split",
    syntax="split attachments",
    summary="Continues with one branch per attachment: each branch carries one attachment "
    "(${attachment.name}, ${attachment.type}) and is recorded with its branch ID in the MPL. "
    "A message without attachments completes here.",
    example="split attachments",
)
