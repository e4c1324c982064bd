"""No password, client secret or token in any log line, exception text, traceback or repr."""

from __future__ import annotations

import base64
import dataclasses
import logging
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest

from flowrt.adapters.mail.smtp.pool import SmtpPool
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from flowrt.errors import ProcessingError, find_hint, render_chain
from tests.servers.postfix import PostfixServer
from tests.servers.scripted_smtp import ScriptedSMTPServer
from tests.smtp.conftest import (
    CLIENT_SECRET,
    PASSWORD,
    TOKEN_PREFIX,
    USER,
    TestTenant,
    TokenEndpoint,
    XOAuth2Server,
    make_receiver,
)

pytestmark = pytest.mark.servers

WRONG = "wr0ng-pa55word-xyz"
SECRETS = (
    PASSWORD,
    WRONG,
    CLIENT_SECRET,
    TOKEN_PREFIX,
    base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),  # the AUTH PLAIN blob
    base64.b64encode(PASSWORD.encode()).decode(),  # the AUTH LOGIN answer
)


def mail() -> Exchange:
    return Exchange(body=b"secret-free\n", headers=Headers([("Subject", "leak check")]))


def texts_of(exc: BaseException) -> list[str]:
    return [
        render_chain(exc),
        find_hint(exc) or "",
        repr(exc),
        "".join(traceback.format_exception(exc)),
        repr(vars(exc)),
    ]


async def test_no_secret_anywhere(
    postfix: PostfixServer,
    tenant: TestTenant,
    token_endpoint: TokenEndpoint,
    xoauth2_server: XOAuth2Server,
    scripted: Callable[..., ScriptedSMTPServer],
    flowrt_logs: list[MutableMapping[str, Any]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    submission = f'"127.0.0.1:{postfix.submission_port}"'

    async def run(receiver: SmtpReceiver, *, fails: bool) -> None:
        outputs.append(repr(receiver))
        async with receiver:
            try:
                report = await receiver.deliver(mail())
            except ProcessingError as exc:
                assert fails, render_chain(exc)
                outputs.extend(texts_of(exc))
            else:
                assert not fails
                outputs.append(repr(report))
                outputs.append(repr(report.to_dict()))
            for target in receiver.pool._targets.values():
                outputs.extend(repr(s) for s in target.idle)
            outputs.extend(repr(key) for key in receiver.pool._targets)

    # a good login, with the session pooled, then a wrong password
    await run(SmtpReceiver(make_receiver(address=submission), tenant.security), fails=False)
    tenant.add_user("smtp-bad", USER, WRONG)
    bad = make_receiver(address=submission, auth='plain credential "smtp-bad"')
    await run(SmtpReceiver(bad, tenant.security), fails=True)
    outputs.append(repr(SmtpReceiver(bad, tenant.security)._login(USER)))

    # refused in clear, and AUTH LOGIN in clear where allowed
    clear = scripted(credentials={USER: PASSWORD}, auth_require_tls=False)
    address = f'"127.0.0.1:{clear.port}"'
    strict = make_receiver(address=address, protection="starttls-optional")
    await run(SmtpReceiver(strict, tenant.security), fails=True)
    allowed = make_receiver(address=address, protection="off", allow_plaintext_auth="")
    await run(SmtpReceiver(allowed, tenant.security), fails=False)

    # OAuth2: a good token, a refused token, an endpoint that echoes the client secret
    tenant.add_oauth2("m365", token_endpoint.url)
    oauth = make_receiver(
        address=f'"127.0.0.1:{xoauth2_server.port}"', auth='oauth2 credential "m365"'
    )
    await run(SmtpReceiver(oauth, tenant.security), fails=True)  # token not accepted
    token_endpoint.on_token = xoauth2_server.valid_tokens.add
    await run(SmtpReceiver(oauth, tenant.security), fails=False)
    token_endpoint.status = 400
    token_endpoint.error = {"error": "invalid_request", "error_description": CLIENT_SECRET}
    receiver = SmtpReceiver(oauth, tenant.security, pool=SmtpPool())
    await run(receiver, fails=True)
    outputs.append(repr(receiver._login(USER)))

    outputs.extend(repr(event) for event in flowrt_logs)
    outputs.extend(record.getMessage() for record in caplog.records if record.name != "mail.log")
    captured = capsys.readouterr()
    outputs += [captured.out, captured.err]
    assert len(outputs) > 20
    text = "\n".join(outputs)
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked: {secret[:4]}..."
    assert any(e["event"] == "smtp.sent" for e in flowrt_logs)  # the logs were captured


def test_login_repr_and_equality_never_show_the_password() -> None:
    from flowrt.adapters.mail.smtp.session import Login
    from flowrt.security import Secret

    login = Login("plain", "smtp-out", USER, password=Secret(PASSWORD))
    assert PASSWORD not in repr(login) and PASSWORD not in str(dataclasses.asdict(login))
