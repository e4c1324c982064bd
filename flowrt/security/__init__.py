"""Keystore, credential store, master key, on-premise locations and TLS contexts of a tenant.

The runtime needs only :class:`TenantSecurity`::

    security = TenantSecurity.open(tenant)              # loads and checks the master key
    login = security.user_credential("smtp-out")        # login.password.reveal() at the wire
    context = security.client_context()                 # trust = the tenant keystore only
    location = security.location("plant-1")             # SOCKS5 connector address

The stores themselves (:class:`Keystore`, :class:`CredentialStore`, :class:`Locations`) are
for the CLI and tests; every change goes through ``edit_*`` context managers that lock, load,
save atomically, and change nothing when the body raises.
"""

from flowrt.security.credentials import (
    Credential,
    CredentialStore,
    OAuth2ClientCredentials,
    OAuth2RefreshToken,
    SecureParameter,
    UserCredential,
    edit_credentials,
)
from flowrt.security.keystore import (
    Entry,
    KeyPair,
    Keystore,
    TrustedCertificate,
    edit_keystore,
    keystore_password,
)
from flowrt.security.locations import Location, Locations, edit_locations
from flowrt.security.masterkey import MasterKey, load_master_key
from flowrt.security.secret import Secret
from flowrt.security.tenant_security import TenantSecurity
from flowrt.security.tls import client_context, unverified_context

__all__ = [
    "Credential",
    "CredentialStore",
    "Entry",
    "KeyPair",
    "Keystore",
    "Location",
    "Locations",
    "MasterKey",
    "OAuth2ClientCredentials",
    "OAuth2RefreshToken",
    "Secret",
    "SecureParameter",
    "TenantSecurity",
    "TrustedCertificate",
    "UserCredential",
    "client_context",
    "edit_credentials",
    "edit_keystore",
    "edit_locations",
    "keystore_password",
    "load_master_key",
    "unverified_context",
]
