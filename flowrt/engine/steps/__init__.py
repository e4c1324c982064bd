"""Pipeline steps, one module each, registered by name.

Each module has a ``SPEC`` (syntax, meaning, load-time check) that the validator and the
README reference read.
"""

from __future__ import annotations

from flowrt.dsl.spec import StepSpec
from flowrt.engine.steps import (
    attachments,
    filter,
    log,
    mpl_property,
    remove,
    route,
    script,
    set,
    split,
)

_MODULES = (set, remove, filter, route, split, script, log, mpl_property, attachments)

#: step kind as in the model (``SetStep.kind``) -> spec
SPECS: dict[str, StepSpec] = {
    ("mpl-property" if module is mpl_property else module.SPEC.name): module.SPEC
    for module in _MODULES
}
