"""``log LEVEL "TEXT"``: a line in the MPL and the runtime log."""

from flowrt.dsl.spec import StepSpec

SPEC = StepSpec(
    name="log",
    syntax='log error|warn|info|debug "TEXT"',
    summary="Writes TEXT (with ${...} expressions) to the message's MPL and the runtime log. "
    "debug lines are kept only when the flow's log-level is debug or trace.",
    example='log info "forwarding ${header.Subject}"',
)
