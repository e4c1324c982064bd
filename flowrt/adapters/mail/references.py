"""What a mail block needs from its tenant: credentials, keystore aliases, location IDs.

Deploy checks these (through the adapter registry) before storing a version, and names the
flow line of each one missing.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa

from flowrt.adapters.mail.model import Connection, Receiver, Sender
from flowrt.dsl import Diagnostic
from flowrt.dsl.model import Pos
from flowrt.errors import FlowrtError
from flowrt.security import (
    OAuth2ClientCredentials,
    OAuth2RefreshToken,
    TenantSecurity,
    UserCredential,
)
from flowrt.security.certificates import describe_key

_KIND_FOR_AUTH: dict[str, tuple[type | tuple[type, ...], str]] = {
    "plain": (UserCredential, "user"),
    "encrypted": (UserCredential, "user"),
    "oauth2": (
        (OAuth2ClientCredentials, OAuth2RefreshToken),
        "oauth2-client-credentials or oauth2-refresh-token",
    ),
}


def check_references(block: Sender | Receiver, security: TenantSecurity) -> list[Diagnostic]:
    """One diagnostic per missing or unfit credential, alias or location of one block."""
    problems: list[Diagnostic] = []

    def error(pos: Pos, code: str, message: str) -> None:
        problems.append(Diagnostic.at(pos, code, message))

    connection: Connection = block.connection
    auth = connection.auth
    where = block.positions.get("auth", block.pos)
    if auth.credential is not None:
        # A store that cannot be read is the tenant's error (it names the file and how to
        # restore it), not a missing credential: adding it again would not help.
        credentials = security.credentials()
        try:
            credential = credentials.get(auth.credential)
        except FlowrtError:
            error(
                where,
                "missing-credential",
                f"credential {auth.credential!r} does not exist in the tenant "
                f"(add it with `flowrt credentials add {auth.credential} ...`)",
            )
        else:
            kind, kind_name = _KIND_FOR_AUTH[auth.method]
            if not isinstance(credential, kind):
                error(
                    where,
                    "credential-kind",
                    f"auth {auth.method} needs a {kind_name} credential; "
                    f"{auth.credential!r} is a {credential.kind}",
                )
    location = connection.proxy.location
    if location is not None and location.is_literal:
        locations = security.locations()  # damaged: the tenant's error, as above
        try:
            locations.get(location.literal)
        except FlowrtError:
            error(
                block.positions.get("proxy", block.pos),
                "missing-location",
                f"location ID {location.literal!r} is not registered in the tenant "
                f"(`flowrt locations add {location.literal} --proxy HOST:PORT`)",
            )
    if isinstance(block, Receiver):
        problems.extend(_alias_problems(block, security))
    return problems


def _alias_problems(receiver: Receiver, security: TenantSecurity) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    keystore = security.keystore()
    for setting, spec in (("sign", receiver.sign), ("encrypt", receiver.encrypt)):
        if spec is None:
            continue
        for alias in spec.aliases:
            if alias not in keystore:
                problems.append(
                    Diagnostic.at(
                        receiver.positions.get(setting, receiver.pos),
                        "missing-alias",
                        f"keystore alias {alias!r} does not exist (`flowrt keystore list`)",
                    )
                )
            elif setting == "encrypt" and not isinstance(
                keystore.get(alias).certificate.public_key(), rsa.RSAPublicKey
            ):
                # cryptography's PKCS#7 envelope takes RSA recipients only: say so at deploy
                problems.append(
                    Diagnostic.at(
                        receiver.positions.get(setting, receiver.pos),
                        "alias-kind",
                        f"encrypt needs an RSA certificate; the key of keystore alias {alias!r} "
                        f"is {describe_key(keystore.get(alias).certificate.public_key())} "
                        "(S/MIME encryption supports RSA recipients only: ask the "
                        "recipient for an RSA certificate)",
                    )
                )
            elif setting == "sign":
                try:
                    keystore.key_pair(alias)
                except FlowrtError:
                    problems.append(
                        Diagnostic.at(
                            receiver.positions.get(setting, receiver.pos),
                            "alias-kind",
                            f"sign needs a key pair; keystore alias {alias!r} is a certificate",
                        )
                    )
    return problems
