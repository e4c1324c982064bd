"""``set header|property "NAME" = VALUE`` and ``set body = VALUE``."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="set",
    syntax='set header "NAME" = VALUE | set property "NAME" = VALUE | set body = VALUE',
    summary="Sets a header, a property or the body. VALUE is a quoted string with ${...} "
    "expressions, or a reference such as header.From.",
    example='set header "X-Forwarded-By" = "flowrt"',
)
