"""Nothing lost, nothing twice: a server restart in the middle of a poll, a runtime killed
between "the flow finished" and "the mailbox was changed" (directly and through Dante), a
SOCKS rule that refuses the mailbox."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from flowrt.adapters.mail.model import PostProcess
from flowrt.engine.exchange import Exchange
from flowrt.errors import MailConnectException, MessagingException, render_chain
from flowrt.net import ProxyRoute
from flowrt.runtime.state import StateDB
from tests.sender.conftest import (
    Recorder,
    endpoint_for,
    fill,
    flags_by_subject,
    make_mail,
    make_sender,
    poller,
)
from tests.servers import DanteServer, DovecotServer, MailboxUser, TestCA, free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_server_restart_mid_poll_recovers_on_the_next_poll(
    dovecot: DovecotServer, mailbox_user: MailboxUser, client_tls: ssl.SSLContext, state: StateDB
) -> None:
    subjects = [f"r{i}" for i in range(5)]
    fill(dovecot, mailbox_user, [make_mail(s) for s in subjects])
    restarted = False

    async def handle(exchange: Exchange) -> bool:
        nonlocal restarted
        if not restarted:
            restarted = True
            await asyncio.to_thread(dovecot.restart)  # every session is dropped
        return True

    recorder = Recorder(lambda e: True)
    # claims off: this is about a mailbox left as it was; a claim keyword set before the
    # restart would stay until the next poll (tested in tests/runtime/test_claims.py)
    sender = dataclasses.replace(
        make_sender(port=dovecot.imaps_port, protection="imaps"), claim=False
    )
    p = poller(sender, endpoint_for(sender, mailbox_user, tls=client_tls), recorder, state)

    async def both(exchange: Exchange) -> bool:
        await recorder(exchange)
        return await handle(exchange)

    p.handle = both
    with pytest.raises(MessagingException) as info:
        await p.poll_once()
    assert "closed the connection" in render_chain(info.value)
    assert p.health.consecutive_failures == 1
    assert all(f == () for f in flags_by_subject(dovecot, mailbox_user).values())
    result = await p.poll_once()  # the mails were done: post-processed now, not handed over
    assert (result.handled, result.recovered) == (0, 5)
    assert recorder.subjects == subjects  # each exactly once
    assert flags_by_subject(dovecot, mailbox_user) == {s: ("\\Seen",) for s in subjects}
    assert p.health.consecutive_failures == 0


@pytest.mark.parametrize("via", ["direct", "dante"])
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_killed_after_the_flow_finished_nothing_lost_nothing_twice(
    request: pytest.FixtureRequest,
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    test_ca: TestCA,
    tmp_path: Path,
    via: str,
    protocol: str,
) -> None:
    socks = request.getfixturevalue("dante").port if via == "dante" else None
    subjects = [f"c{i}" for i in range(5)]
    fill(dovecot, mailbox_user, [make_mail(s) for s in subjects])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(test_ca.cert_pem)
    sent = tmp_path / "sent.txt"
    state_path = tmp_path / "state.sqlite"
    config = {
        "protocol": protocol,
        "port": dovecot.ports()[protocol],
        "protection": "starttls-mandatory",
        "ca": str(ca_file),
        "socks": socks,
        "user": mailbox_user.address,
        "password": mailbox_user.password,
        "state": str(state_path),
        "sent": str(sent),
        "kill_after": 3,
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.sender.crash_poller", json.dumps(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    before = sent.read_text().split()
    assert before == subjects[:3]
    assert len(dovecot.messages(mailbox_user.address)) == 5  # nothing changed yet
    # the restarted runtime: the dead process's lock does not stand in the way
    sender = make_sender(protocol, port=dovecot.ports()[protocol], protection="starttls-mandatory")
    route = ProxyRoute("127.0.0.1", socks) if socks else None
    recorder = Recorder()
    with StateDB(state_path) as state:
        endpoint = endpoint_for(sender, mailbox_user, tls=test_ca.client_context(), route=route)
        result = await poller(sender, endpoint, recorder, state).poll_once()
    assert (result.handled, result.recovered) == (2, 3)
    assert sorted(before + recorder.subjects) == subjects  # every mail, each once
    if protocol == "imap":
        assert flags_by_subject(dovecot, mailbox_user) == {s: ("\\Seen",) for s in subjects}
    else:
        assert dovecot.messages(mailbox_user.address) == []


@pytest.mark.parametrize(
    ("protocol", "port", "protection"),
    [
        ("imap", "imaps", "imaps"),
        ("imap", "imap", "starttls-mandatory"),
        ("pop3", "pop3s", "pop3s"),
    ],
)
async def test_poll_through_socks5(
    dante: DanteServer,
    dovecot: DovecotServer,
    mailbox_user: MailboxUser,
    client_tls: ssl.SSLContext,
    state: StateDB,
    protocol: str,
    port: str,
    protection: str,
) -> None:
    fill(dovecot, mailbox_user, [make_mail("proxied")])
    sender = make_sender(
        protocol,  # type: ignore[arg-type]
        port=dovecot.ports()[port],
        protection=protection,
        post_process=PostProcess("keep"),
    )
    route = ProxyRoute(dante.host, dante.port)
    handle = Recorder()
    endpoint = endpoint_for(sender, mailbox_user, tls=client_tls, route=route)
    assert (await poller(sender, endpoint, handle, state).poll_once()).handled == 1
    assert handle.subjects == ["proxied"]


async def test_socks_rule_refusal_is_a_connect_failure(
    dante: DanteServer, mailbox_user: MailboxUser, state: StateDB
) -> None:
    sender = make_sender(port=free_port())  # not a mapped destination
    route = ProxyRoute(dante.host, dante.port)
    with pytest.raises(MailConnectException) as info:
        await poller(
            sender, endpoint_for(sender, mailbox_user, route=route), Recorder(), state
        ).poll_once()
    assert "SocksException: Connection not allowed by ruleset" in render_chain(info.value)
    assert not info.value.retryable
