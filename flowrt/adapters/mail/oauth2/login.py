"""Sign in once for delegated access to a mailbox: authorization code with PKCE, a loopback
redirect, the code exchanged for a refresh token, the result an :class:`OAuth2RefreshToken`
(which the caller stores). The CLI only prints, reads and stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable

from flowrt.adapters.mail.oauth2.authorize import (
    LoopbackReceiver,
    authorization,
    code_from_redirect,
)
from flowrt.adapters.mail.oauth2.grants import exchange_code
from flowrt.adapters.mail.oauth2.providers import Provider, login_command
from flowrt.errors import AuthenticationFailedException
from flowrt.security import Secret
from flowrt.security.credentials import OAuth2RefreshToken


@dataclasses.dataclass(frozen=True)
class SignIn:
    name: str
    provider: Provider
    client_id: str
    authorize_url: str
    token_url: str
    scope: str
    user: str | None = None
    client_secret: Secret | None = None

    def credential(self, refresh_token: Secret) -> OAuth2RefreshToken:
        return OAuth2RefreshToken(
            self.name,
            self.token_url,
            self.client_id,
            refresh_token,
            self.client_secret,
            self.scope,
            self.user,
            self.provider.name,
            self.authorize_url,
        )


Show = Callable[[str, str], None]  # (address to open, redirect URI)
Paste = Callable[[str], Awaitable[str]]  # redirect URI -> the address the browser was sent to


async def sign_in(
    request: SignIn,
    *,
    tls: Callable[[], ssl.SSLContext],
    show: Show,
    paste: Paste | None = None,
    port: int = 0,
    wait: float = 300.0,
    timeout: float = 30.0,
) -> OAuth2RefreshToken:
    """Run the sign-in; without ``paste`` the code comes to a listener on 127.0.0.1:``port``,
    with it from the address the user pastes (a browser on another machine)."""
    receiver = LoopbackReceiver()
    try:
        if paste is None:
            redirect_uri = await receiver.start(port)
        else:
            redirect_uri = f"http://127.0.0.1:{port or 8400}/"
        auth = authorization(
            request.authorize_url,
            client_id=request.client_id,
            scope=request.scope,
            redirect_uri=redirect_uri,
            user=request.user,
            extra=request.provider.authorize_params,
        )
        show(auth.url, redirect_uri)
        if paste is None:
            answer = await receiver.wait(wait)
        else:
            answer = await paste(redirect_uri)
    finally:
        await receiver.close()
    code = code_from_redirect(answer, auth.state)
    form = {
        "code": code,
        "redirect_uri": auth.redirect_uri,
        "client_id": request.client_id,
        "code_verifier": auth.verifier,
    }
    secrets_sent = [code, auth.verifier]
    if request.client_secret is not None:
        form["client_secret"] = request.client_secret.reveal()
        secrets_sent.append(form["client_secret"])
    again = login_command(request.credential(Secret("-")))
    answer_ = await exchange_code(
        name=request.name,
        token_url=request.token_url,
        form=form,
        secrets=tuple(secrets_sent),
        tls=tls,
        timeout=timeout,
        again=again,
    )
    if answer_.refresh_token is None:
        raise AuthenticationFailedException(
            f"the identity provider signed in credential {request.name} but gave no refresh "
            "token, so flowrt could not log in again after an hour",
            hint={
                "microsoft": "the scope must include offline_access (the preset has it; "
                "check --scope)",
                "google": "Google gives a refresh token only on consent with "
                "access_type=offline (the preset asks for it); remove the app's access in "
                "the Google account and sign in again",
            }.get(
                request.provider.name,
                "ask the identity provider for a refresh token (often the scope offline_access)",
            ),
        )
    return request.credential(answer_.refresh_token)


def run_sign_in(request: SignIn, **kwargs: object) -> OAuth2RefreshToken:
    """:func:`sign_in` from synchronous code (the CLI)."""
    return asyncio.run(sign_in(request, **kwargs))  # type: ignore[arg-type]
