"""What every command gets from the global options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from flowrt.tenant import Tenant


@dataclasses.dataclass
class CliContext:
    tenant_dir: Path

    @property
    def tenant(self) -> Tenant:
        """The tenant, which must exist (else a TenantError says how to create it)."""
        return Tenant(self.tenant_dir).require()

    @property
    def tenant_layout(self) -> Tenant:
        """The tenant's layout, whether or not it exists yet (for `init`)."""
        return Tenant(self.tenant_dir)


pass_cli = click.make_pass_decorator(CliContext)
