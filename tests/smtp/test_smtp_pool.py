"""Connection reuse: one live flow does not open a connection per mail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from flowrt.adapters.mail.smtp.pool import SmtpPool
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver
from flowrt.engine.exchange import Exchange, Headers
from tests.servers.postfix import PostfixServer
from tests.servers.scripted_smtp import ScriptedSMTPServer
from tests.smtp.conftest import TestTenant, make_receiver

Start = Callable[..., ScriptedSMTPServer]


def mail(i: int) -> Exchange:
    return Exchange(body=f"mail {i}\n".encode(), headers=Headers([("Subject", f"n{i}")]))


def receiver_for(tenant: TestTenant, port: int, pool: SmtpPool | None = None) -> SmtpReceiver:
    settings = {
        "address": f'"127.0.0.1:{port}"',
        "protection": "off",
        "auth": "none",
        "timeout": "5s",
    }
    return SmtpReceiver(make_receiver(**settings), tenant.security, pool=pool)


async def test_sequential_mails_share_one_connection(tenant: TestTenant, scripted: Start) -> None:
    server = scripted()
    async with receiver_for(tenant, server.port) as smtp:
        reports = [await smtp.deliver(mail(i)) for i in range(20)]
    assert server.connections == 1
    assert len(server.wait_for_messages(20)) == 20
    assert [r.reused_connection for r in reports] == [False] + [True] * 19
    assert smtp.pool.stats.opened == 1 and smtp.pool.stats.reused == 19


async def test_concurrent_mails_use_at_most_the_per_target_limit(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(delays={"DATA": 0.02})
    pool = SmtpPool(per_target=3)
    smtp = receiver_for(tenant, server.port, pool)
    await asyncio.gather(*(smtp.deliver(mail(i)) for i in range(30)))
    await pool.aclose()
    assert len(server.wait_for_messages(30)) == 30
    assert server.connections == 3
    assert pool.stats.opened == 3 and pool.stats.reused == 27


async def test_idle_sessions_are_closed_after_the_idle_timeout(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted()
    pool = SmtpPool(idle_timeout=0.2)
    smtp = receiver_for(tenant, server.port, pool)
    await smtp.deliver(mail(1))
    assert pool.idle_count() == 1
    await asyncio.sleep(0.5)
    assert pool.idle_count() == 0 and pool.stats.closed == 1
    await smtp.deliver(mail(2))
    assert server.connections == 2
    await pool.aclose()


async def test_a_connection_the_server_closed_is_replaced(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted(timeout=0.3)  # aiosmtpd closes idle clients after 0.3s (421)
    async with receiver_for(tenant, server.port) as smtp:
        await smtp.deliver(mail(1))
        await asyncio.sleep(0.8)
        report = await smtp.deliver(mail(2))
    assert report.attempts == 1 and not report.reused_connection
    assert server.connections == 2
    assert len(server.wait_for_messages(2)) == 2


async def test_a_stale_session_is_checked_with_noop_before_reuse(
    tenant: TestTenant, scripted: Start
) -> None:
    server = scripted()
    pool = SmtpPool(check_after=0.0)
    async with receiver_for(tenant, server.port, pool) as smtp:
        await smtp.deliver(mail(1))
        (session,) = [s for t in pool._targets.values() for s in t.idle]
        noops = 0
        original = session.smtp.noop

        async def counting_noop(**kwargs: object) -> object:
            nonlocal noops
            noops += 1
            return await original(**kwargs)  # type: ignore[arg-type]

        session.smtp.noop = counting_noop  # type: ignore[method-assign,assignment]
        report = await smtp.deliver(mail(2))
    assert noops == 1 and report.reused_connection
    assert server.connections == 1


async def test_postfix_submission_one_tls_session_for_many_mails(
    postfix: PostfixServer, tenant: TestTenant
) -> None:
    receiver = make_receiver(address=f'"127.0.0.1:{postfix.submission_port}"')
    offset = postfix.log_offset()
    async with SmtpReceiver(receiver, tenant.security) as smtp:
        for i in range(5):
            await smtp.deliver(mail(i))
    summary = "ehlo=2 starttls=1 auth=1 mail=5 rcpt=5 bdat=5 quit=1"
    for _ in range(100):  # Postfix writes the summary just after QUIT; wait for it (bounded)
        log = postfix._log_since(offset)
        if summary in log:
            break
        await asyncio.sleep(0.05)
    assert log.count(" connect from ") == 1
    # Postfix sums up the session when it ends: one TLS handshake and one login for 5 mails.
    assert summary in log
