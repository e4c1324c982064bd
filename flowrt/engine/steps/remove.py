"""``remove header|property "NAME"`` and ``remove body``."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="remove",
    syntax='remove header "NAME" | remove property "NAME" | remove body',
    summary="Removes a header (every occurrence), a property, or empties the body.",
    example='remove header "Received"',
)
