"""Identity-provider presets: where to sign in, where tokens come from, which scopes give
IMAP, POP3 and SMTP. ``custom`` has none; any preset value can be overridden on the command
line (`flowrt credentials oauth2-login ... --token-url/--authorize-url/--scope`).
"""

from __future__ import annotations

import dataclasses
import shlex

from flowrt.security.credentials import OAuth2RefreshToken


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    authorize_url: str | None
    token_url: str | None
    scopes: dict[str, str]  # protocol -> scope
    always: tuple[str, ...] = ()  # scopes asked for in any case (a refresh token, the user)
    # extra query parameters of the authorize URL
    authorize_params: tuple[tuple[str, str], ...] = ()

    def scope_for(self, protocols: tuple[str, ...]) -> str:
        wanted = [self.scopes[p] for p in protocols if p in self.scopes]
        return " ".join(dict.fromkeys([*wanted, *self.always]))


_MS = "https://login.microsoftonline.com/common/oauth2/v2.0"
_OUTLOOK = "https://outlook.office.com"

PROVIDERS: dict[str, Provider] = {
    # Microsoft identity platform v2.0, multi-tenant endpoint ("common"); a single-tenant
    # app registration uses its tenant ID instead: --authorize-url/--token-url.
    "microsoft": Provider(
        "microsoft",
        f"{_MS}/authorize",
        f"{_MS}/token",
        {
            "imap": f"{_OUTLOOK}/IMAP.AccessAsUser.All",
            "pop3": f"{_OUTLOOK}/POP.AccessAsUser.All",
            "smtp": f"{_OUTLOOK}/SMTP.Send",
        },
        always=("offline_access",),
    ),
    # Google: one scope covers IMAP, POP3 and SMTP; a refresh token only with
    # access_type=offline, and again on a second consent only with prompt=consent.
    "google": Provider(
        "google",
        "https://accounts.google.com/o/oauth2/v2/auth",
        "https://oauth2.googleapis.com/token",
        {p: "https://mail.google.com/" for p in ("imap", "pop3", "smtp")},
        authorize_params=(("access_type", "offline"), ("prompt", "consent")),
    ),
    "custom": Provider("custom", None, None, {}),
}

PROTOCOLS = ("imap", "pop3", "smtp")


def login_command(credential: OAuth2RefreshToken) -> str:
    """The `flowrt credentials oauth2-login` that gets ``credential`` a new refresh token."""
    preset = PROVIDERS.get(credential.provider, PROVIDERS["custom"])
    words = [
        "flowrt",
        "credentials",
        "oauth2-login",
        credential.name,
        "--provider",
        preset.name,
        "--client-id",
        credential.client_id,
    ]
    if credential.authorize_url and credential.authorize_url != preset.authorize_url:
        words += ["--authorize-url", credential.authorize_url]
    if credential.token_url != preset.token_url:
        words += ["--token-url", credential.token_url]
    if credential.scope and credential.scope != preset.scope_for(PROTOCOLS):
        words += ["--scope", credential.scope]
    if credential.user:
        words += ["--user", credential.user]
    if credential.client_secret is not None:
        words.append("--client-secret-stdin")
    words.append("--replace")
    return " ".join(shlex.quote(w) for w in words)
