"""TenantSecurity: what the runtime uses, reloaded when the files change."""

from __future__ import annotations

import pytest

from flowrt.errors import ConnectorError, CredentialError, TenantError
from flowrt.security import TenantSecurity
from flowrt.tenant import Tenant


def test_resolves_and_reloads(flowrt, pki, root_ca):
    security = TenantSecurity.open(flowrt.tenant)
    assert len(security.keystore()) == 0
    with pytest.raises(CredentialError, match="no credential named 'smtp-out'"):
        security.user_credential("smtp-out")
    with pytest.raises(ConnectorError, match="no on-premise location with ID 'plant-1'"):
        security.location("plant-1")

    flowrt.ok("credentials", "add", "smtp-out", "--user", "me", "--password-stdin", input="p1")
    flowrt.ok("locations", "add", "plant-1", "--proxy", "conn:1080", "--credential", "smtp-out")
    flowrt.ok("keystore", "add", "root", str(pki.write("r.cer", root_ca.der())))

    assert security.user_credential("smtp-out").password.reveal() == "p1"
    assert security.credential("smtp-out").kind == "user"
    assert security.location("plant-1").proxy == "conn:1080"
    assert [e.alias for e in security.keystore()] == ["root"]
    keystore = security.keystore()
    assert security.keystore() is keystore  # unchanged file: not read again
    context = security.client_context()
    assert security.client_context() is context

    flowrt.ok(
        "credentials",
        "add",
        "smtp-out",
        "--user",
        "me",
        "--password-stdin",
        "--replace",
        input="p2",
    )
    assert security.user_credential("smtp-out").password.reveal() == "p2"
    flowrt.ok("keystore", "delete", "root")
    assert len(security.keystore()) == 0
    assert security.client_context() is not context


def test_open_needs_a_tenant(tmp_path):
    with pytest.raises(TenantError, match="no tenant at"):
        TenantSecurity.open(Tenant(tmp_path / "none"))
