"""OAuth 2.0 for mail logins (XOAUTH2, OAUTHBEARER): access tokens from a client-credentials
grant or a stored refresh token, over httpx.

* :mod:`.tokens` - the per-credential token cache the runtime shares (:class:`OAuth2Tokens`);
* :mod:`.grants` - the token requests and their failures as chains with hints;
* :mod:`.providers` - Microsoft and Google presets;
* :mod:`.authorize` - the authorization-code flow with PKCE behind `oauth2-login`;
* :mod:`._transport` - httpx over :mod:`flowrt.net` (direct or through the connector).
"""

from flowrt.adapters.mail.oauth2.grants import TokenAnswer, request_token
from flowrt.adapters.mail.oauth2.providers import PROVIDERS, Provider, login_command
from flowrt.adapters.mail.oauth2.tokens import OAuth2Tokens, RefreshTokenStore, TokenSource

__all__ = [
    "PROVIDERS",
    "OAuth2Tokens",
    "Provider",
    "RefreshTokenStore",
    "TokenAnswer",
    "TokenSource",
    "login_command",
    "request_token",
]
