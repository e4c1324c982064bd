"""``filter CONDITION``: messages that do not match complete here, with a note."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="filter",
    syntax="filter CONDITION",
    summary="Lets a message through only when CONDITION holds; any other message completes "
    "here, nothing is sent, and the MPL notes the filter.",
    example='filter header.Subject matches "(?i)invoice"',
)
