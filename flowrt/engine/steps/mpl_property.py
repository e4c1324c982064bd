"""``mpl property NAME = VALUE``: a custom header property, searchable in the MPL."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="mpl",
    syntax='mpl property "NAME" = VALUE',
    summary="Records a custom header property on the message's MPL; find it later with "
    "`flowrt mpl list --property NAME=VALUE`.",
    example='mpl property "customer" = header.From',
)
