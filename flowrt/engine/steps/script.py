"""``script "module:function"``: a Python callable that takes the exchange."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="script",
    syntax='script "module:function"',
    summary="Calls a Python function with the exchange. The module is looked up in the "
    "flow's folder, then on the Python path; what it raises is recorded in the MPL chain.",
    example='script "transforms:enrich"',
)
