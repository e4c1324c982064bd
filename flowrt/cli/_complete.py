"""Shell completion of names the tenant holds: deployed flows, keystore aliases, credentials,
location IDs. Completion runs without the group callbacks, so the tenant directory is read
from the parsed command line; any problem completes nothing rather than printing an error
into the user's shell."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click
from click.shell_completion import CompletionItem

from flowrt.tenant import Tenant, resolve_tenant_dir

TENANT_META = "flowrt.tenant_dir"


def _tenant(ctx: click.Context) -> Tenant | None:
    explicit = ctx.meta.get(TENANT_META) or ctx.find_root().params.get("tenant_dir")
    tenant = Tenant(resolve_tenant_dir(explicit))
    return tenant if tenant.exists() else None


def _completer(
    names: Callable[[Tenant], Iterable[str]],
) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    def complete(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        tenant = _tenant(ctx)
        if tenant is None:
            return []
        try:
            found = sorted(set(names(tenant)))
        except Exception:  # a broken tenant must not break the user's shell
            return []
        return [CompletionItem(name) for name in found if name.startswith(incomplete)]

    return complete


def _flows(tenant: Tenant) -> list[str]:
    from flowrt.store import open_deployments

    store = open_deployments(tenant)
    try:
        return store.names()
    finally:
        store.close()


def _aliases(tenant: Tenant) -> list[str]:
    from flowrt.security.keystore import Keystore

    return [entry.alias for entry in Keystore.open(tenant)]


def _credentials(tenant: Tenant) -> list[str]:
    from flowrt.security.credentials import CredentialStore

    return [credential.name for credential in CredentialStore.open(tenant)]


def _locations(tenant: Tenant) -> list[str]:
    from flowrt.security.locations import Locations

    return [location.id for location in Locations.open(tenant)]


complete_flow_names = _completer(_flows)
complete_aliases = _completer(_aliases)
complete_credentials = _completer(_credentials)
complete_locations = _completer(_locations)
