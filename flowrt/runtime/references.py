"""What a flow needs from its tenant (credentials, keystore aliases, location IDs), each
block checked by its own adapter through the registry.

Deploy checks these before storing a version, and names the flow line of each one missing.
"""

from __future__ import annotations

from flowrt.adapters import registry
from flowrt.dsl import Diagnostic
from flowrt.dsl.model import Flow
from flowrt.security import TenantSecurity


def check_references(flow: Flow, security: TenantSecurity) -> list[Diagnostic]:
    """One diagnostic per missing or unfit credential, alias or location."""
    problems: list[Diagnostic] = []
    if flow.sender is not None:
        problems.extend(registry.references(flow.sender, security))
    for receiver in flow.receivers:
        problems.extend(registry.references(receiver, security))
    return problems
