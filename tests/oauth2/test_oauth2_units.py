"""The small pieces: OAUTHBEARER's initial response, which mechanism is chosen, the PKCE
address, reading the redirect, and the login command a hint names."""

from __future__ import annotations

import base64
import hashlib
import urllib.parse

import pytest

from flowrt.adapters.mail.oauth2.authorize import authorization, code_from_redirect
from flowrt.adapters.mail.oauth2.providers import PROTOCOLS, PROVIDERS, login_command
from flowrt.adapters.mail.sasl import oauth2_mechanism, oauthbearer_response
from flowrt.errors import AuthenticationFailedException, UsageError
from flowrt.security import OAuth2RefreshToken, Secret


def test_oauthbearer_initial_response_follows_rfc_7628() -> None:
    response = oauthbearer_response("a,b=c@example.com", Secret("T"), "imap.example.com", 993)
    assert response == (
        b"n,a=a=2Cb=3Dc@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer T\x01\x01"
    )


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ({"XOAUTH2", "OAUTHBEARER"}, "OAUTHBEARER"),
        ({"XOAUTH2"}, "XOAUTH2"),
        ({"OAUTHBEARER", "PLAIN"}, "OAUTHBEARER"),
        ({"PLAIN"}, None),
    ],
)
def test_the_mechanism_is_what_the_server_offers(offered: set[str], chosen: str | None) -> None:
    assert oauth2_mechanism(offered.__contains__) == chosen


def test_authorization_address_carries_a_pkce_challenge_of_its_verifier() -> None:
    auth = authorization(
        "https://login.example.com/authorize?tenant=x",
        client_id="app",
        scope="a b",
        redirect_uri="http://127.0.0.1:5000/",
        user="me@example.com",
        extra=(("access_type", "offline"),),
    )
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(auth.url).query))
    digest = hashlib.sha256(auth.verifier.encode()).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert query["code_challenge_method"] == "S256" and query["state"] == auth.state
    assert query["tenant"] == "x" and query["access_type"] == "offline"
    assert query["login_hint"] == "me@example.com" and query["scope"] == "a b"
    assert 43 <= len(auth.verifier) <= 128


def test_reading_the_redirect() -> None:
    assert code_from_redirect("http://127.0.0.1:8400/?code=C1&state=S", "S") == "C1"
    assert code_from_redirect("?state=S&code=C2", "S") == "C2"
    with pytest.raises(AuthenticationFailedException, match="its state differs"):
        code_from_redirect("http://127.0.0.1:8400/?code=C1&state=other", "S")
    with pytest.raises(AuthenticationFailedException, match="refused: consent_required"):
        code_from_redirect("http://127.0.0.1/?error=consent_required&state=S", "S")
    with pytest.raises(UsageError, match="no code="):
        code_from_redirect("http://127.0.0.1/?state=S", "S")


def test_the_login_command_in_hints_repeats_only_what_differs_from_the_preset() -> None:
    ms = PROVIDERS["microsoft"]
    assert ms.token_url is not None
    credential = OAuth2RefreshToken(
        "m365",
        ms.token_url,
        "11111111-2222",
        Secret("rt"),
        scope=ms.scope_for(PROTOCOLS),
        user="me@example.com",
        provider="microsoft",
        authorize_url=ms.authorize_url,
    )
    assert login_command(credential) == (
        "flowrt credentials oauth2-login m365 --provider microsoft --client-id 11111111-2222 "
        "--user me@example.com --replace"
    )
    confidential = OAuth2RefreshToken(
        "g", "https://t.example/token", "c", Secret("rt"), Secret("s"), "x y", None, "google"
    )
    assert login_command(confidential) == (
        "flowrt credentials oauth2-login g --provider google --client-id c "
        "--token-url https://t.example/token --scope 'x y' --client-secret-stdin --replace"
    )
