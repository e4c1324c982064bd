"""Smoke tests proving the loopback test servers (tests/servers/) really work.

Clients are the standard library's (imaplib, poplib, smtplib) plus python-socks, trusting
only the test CA with host name checking, so these tests check the servers, not flowrt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import os
import poplib
import signal
import smtplib
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from python_socks import ProxyError
from python_socks.async_.asyncio import Proxy as AsyncProxy
from python_socks.sync import Proxy

from tests.servers import (
    DEFAULT_USERS,
    DanteServer,
    DovecotServer,
    MailboxUser,
    Message,
    PostfixServer,
    ScriptedSMTPServer,
    ServerCert,
    ServerStartError,
    ServerUnavailable,
    SmtpSink,
    TestCA,
    run_smtp_source,
)
from tests.servers._proc import require_binary

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parent.parent


def _mail(subject: str, to: str, sender: str = "sender@example.test") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


# -- the CA ---------------------------------------------------------------------------------


def test_ca_chain_expired_and_wrong_host(test_ca: TestCA, test_intermediate_ca: TestCA) -> None:
    assert test_ca.subject_cn == "flowrt Test Root CA"
    assert test_ca.cert_der.startswith(b"\x30")
    good = test_intermediate_ca.issue_server_cert()
    assert good.chain_pem.count(b"BEGIN CERTIFICATE") == 2  # leaf + intermediate
    now = dt.datetime.now(dt.UTC)
    expired = test_intermediate_ca.issue_server_cert(
        not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
    )
    wrong_host = test_intermediate_ca.issue_server_cert(["wrong.example"], key_type="ec")

    def handshake(cert: ServerCert, server_hostname: str = "localhost") -> None:
        with ScriptedSMTPServer(tls=cert, implicit_tls=True) as server:
            ctx = test_ca.client_context()
            with smtplib.SMTP_SSL(server.host, server.port, context=ctx, timeout=5) as c:
                c._host = server_hostname  # type: ignore[attr-defined]
                c.noop()

    with ScriptedSMTPServer(tls=good, implicit_tls=True) as server:
        ctx = test_ca.client_context()
        with smtplib.SMTP_SSL(server.host, server.port, context=ctx, timeout=5) as c:
            assert c.noop()[0] == 250
            sock = c.sock
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        handshake(expired)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch|IP address"):
        handshake(wrong_host)
    # A context trusting another CA does not accept the chain.
    with ScriptedSMTPServer(tls=good, implicit_tls=True) as server:
        other = TestCA("some other CA").client_context()
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            smtplib.SMTP_SSL(server.host, server.port, context=other, timeout=5)


# -- Dovecot --------------------------------------------------------------------------------


def test_imap_login_cram_md5_and_starttls(dovecot: DovecotServer, test_ca: TestCA) -> None:
    user = "plant@example.com"
    password = DEFAULT_USERS[user]
    assert dovecot.password(user) == password

    c = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        assert "STARTTLS" in c.capabilities
        assert "AUTH=CRAM-MD5" in c.capabilities
        typ, _ = c.login_cram_md5(user, password)
        assert typ == "OK"
    finally:
        c.logout()

    c = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        typ, _ = c.login(user, password)  # plaintext LOGIN is allowed without TLS
        assert typ == "OK"
    finally:
        c.logout()

    c = imaplib.IMAP4("localhost", dovecot.imap_port, timeout=10)
    try:
        c.starttls(ssl_context=test_ca.client_context())  # verifies chain + "localhost"
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        cert = sock.getpeercert()
        assert cert is not None
        assert ("DNS", "mail.test.example") in cert["subjectAltName"]
        typ, _ = c.login(user, password)
        assert typ == "OK"
    finally:
        c.logout()

    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10).login(user, "wrong")


def test_imaps_and_helpers(
    dovecot: DovecotServer, test_ca: TestCA, mailbox_user: MailboxUser
) -> None:
    user = mailbox_user.address
    with dovecot.imap(user, ssl_context=test_ca.client_context()) as c:
        assert c.select("INBOX")[0] == "OK"
    assert dovecot.messages(user) == []
    uid = dovecot.append(user, "INBOX", _mail("first", user), flags=["\\Seen"])
    dovecot.append(user, "Processed", _mail("second", user))
    assert dovecot.folders(user) == ["INBOX", "Processed"]
    [(got_uid, flags, raw)] = dovecot.messages(user, "INBOX")
    assert got_uid == uid
    assert "\\Seen" in flags
    assert b"Subject: first" in raw
    found = dovecot.wait_for_message(user, "Processed", lambda m: b"second" in m[2], timeout=5)
    assert "\\Seen" not in found[1]


def test_imap_idle(dovecot: DovecotServer, mailbox_user: MailboxUser) -> None:
    user = mailbox_user.address
    c = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        c.login(user, mailbox_user.password)
        assert "IDLE" in c.capabilities
        c.select("INBOX")
        c.send(b"i1 IDLE\r\n")
        assert c.readline().startswith(b"+")
        dovecot.append(user, "INBOX", _mail("pushed", user))
        line = c.readline()
        assert line.strip() == b"* 1 EXISTS", line
        c.send(b"DONE\r\n")
        while not (line := c.readline()).startswith(b"i1 "):
            pass
        assert line.startswith(b"i1 OK")
    finally:
        c.logout()


def test_pop3_stls_and_pop3s(
    dovecot: DovecotServer, test_ca: TestCA, mailbox_user: MailboxUser
) -> None:
    user = mailbox_user.address
    dovecot.append(user, "INBOX", _mail("pop me", user))

    p = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        assert "STLS" in p.capa()
        p.stls(context=test_ca.client_context())
        p.user(user)
        p.pass_(mailbox_user.password)
        count, _size = p.stat()
        assert count == 1
        _resp, lines, _octets = p.retr(1)
        assert b"Subject: pop me" in lines
    finally:
        p.quit()

    p3 = poplib.POP3_SSL(
        dovecot.host, dovecot.pop3s_port, context=test_ca.client_context(), timeout=10
    )
    try:
        p3.user(user)
        p3.pass_(mailbox_user.password)
        assert p3.stat()[0] == 1
    finally:
        p3.quit()


def test_dovecot_restart_keeps_mail_and_ports(
    dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    user = mailbox_user.address
    dovecot.append(user, "INBOX", _mail("survives", user))
    ports = dovecot.ports()
    dovecot.restart()
    assert dovecot.ports() == ports
    [(_uid, _flags, raw)] = dovecot.messages(user)
    assert b"survives" in raw
    dovecot.kill()
    assert not dovecot.running
    dovecot.start()
    assert dovecot.ports() == ports
    assert len(dovecot.messages(user)) == 1


def test_dovecot_without_tls(dovecot_no_tls: DovecotServer) -> None:
    assert dovecot_no_tls.imaps_port == 0
    c = imaplib.IMAP4(dovecot_no_tls.host, dovecot_no_tls.imap_port, timeout=10)
    try:
        assert "STARTTLS" not in c.capabilities
        assert c.login("plant@example.com", DEFAULT_USERS["plant@example.com"])[0] == "OK"
    finally:
        c.logout()
    p = poplib.POP3(dovecot_no_tls.host, dovecot_no_tls.pop3_port, timeout=10)
    try:
        assert "STLS" not in p.capa()
    finally:
        p.quit()


def test_dovecot_start_failure_shows_log() -> None:
    server = DovecotServer(start_timeout=10)
    try:
        server.cert_path.unlink()  # Dovecot refuses a config naming a missing ssl_cert
        with pytest.raises(ServerStartError) as info:
            server.start()
        assert "ssl_cert" in str(info.value)
        assert str(server.cert_path) in str(info.value)
        assert not server.running
    finally:
        server.close()


def test_missing_binary_names_the_package() -> None:
    with pytest.raises(ServerUnavailable, match="dovecot-imapd"):
        require_binary("/nonexistent/flowrt-no-such-dovecot", "dovecot-imapd", "Dovecot")


# -- Postfix --------------------------------------------------------------------------------


def test_submission_starttls_auth_plain_and_cram_md5_deliver(
    postfix: PostfixServer,
    dovecot: DovecotServer,
    test_ca: TestCA,
    new_mailbox_user: Callable[..., MailboxUser],
) -> None:
    sender = new_mailbox_user("sender")
    rcpt = new_mailbox_user("rcpt")
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=10) as s:
        s.ehlo()
        assert "auth" not in s.esmtp_features  # AUTH only after STARTTLS
        with pytest.raises(smtplib.SMTPSenderRefused, match="STARTTLS"):
            s.sendmail(sender.address, [rcpt.address], _mail("no tls", rcpt.address))
    with smtplib.SMTP("localhost", postfix.submission_port, timeout=10) as s:
        s.starttls(context=test_ca.client_context())
        s.ehlo()
        assert {"PLAIN", "LOGIN", "CRAM-MD5"} <= set(s.esmtp_features["auth"].split())
        s.user, s.password = sender.address, sender.password
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
        s.sendmail(sender.address, [rcpt.address], _mail("via plain", rcpt.address))
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=10) as s:
        s.starttls(context=test_ca.client_context())
        s.ehlo()
        s.user, s.password = sender.address, sender.password
        assert s.auth("CRAM-MD5", s.auth_cram_md5)[0] == 235
        s.sendmail(sender.address, [rcpt.address], _mail("via cram", rcpt.address))
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=10) as s:
        s.starttls(context=test_ca.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(sender.address, "wrong password")
    for subject in (b"via plain", b"via cram"):

        def has_subject(m: Message, subject: bytes = subject) -> bool:
            return subject in m[2]

        _uid, _flags, raw = dovecot.wait_for_message(rcpt.address, "INBOX", has_subject, 15)
        assert f"Delivered-To: {rcpt.address}".encode() in raw


def test_smtps_auth_login_delivers(
    postfix: PostfixServer, dovecot: DovecotServer, test_ca: TestCA, mailbox_user: MailboxUser
) -> None:
    ctx = test_ca.client_context()
    with smtplib.SMTP_SSL(postfix.host, postfix.smtps_port, context=ctx, timeout=10) as s:
        s.user, s.password = mailbox_user.address, mailbox_user.password
        assert s.auth("LOGIN", s.auth_login)[0] == 235
        s.sendmail(mailbox_user.address, [mailbox_user.address], _mail("smtps", "me"))
    postfix.wait_delivered(mailbox_user.address)
    assert dovecot.wait_for_message(mailbox_user.address, timeout=10)


def test_smtp_port_rejects_unknown_recipient_and_relaying(
    postfix: PostfixServer, dovecot: DovecotServer, mailbox_user: MailboxUser
) -> None:
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")
        code, _ = s.mail("someone@example.test")
        assert code == 250
        code, reply = s.rcpt("nobody-here@example.com")
        assert code == 550
        assert b"User unknown" in reply
        code, _ = s.rcpt(mailbox_user.address)
        assert code == 250
        s.rset()
        refused = s.sendmail("x@example.test", [mailbox_user.address], _mail("plain smtp", "x"))
        assert refused == {}
    assert "status=sent" in postfix.wait_delivered(mailbox_user.address)
    assert dovecot.wait_for_message(mailbox_user.address, timeout=10)


def test_smtp_sink_accepts_smtp_source(smtp_sink: SmtpSink) -> None:
    result = run_smtp_source(smtp_sink.port, messages=200, sessions=4, size=2048)
    assert result.returncode == 0
    assert smtp_sink.wait_messages(200, timeout=15) >= 200
    assert result.rate > 0


# -- Dante ------------------------------------------------------------------------------------


def test_dante_forwards_allowed_and_denies_others(
    dante: DanteServer, dovecot: DovecotServer
) -> None:
    proxy = Proxy.from_url(dante.url)
    sock = proxy.connect(dest_host=dovecot.host, dest_port=dovecot.imap_port, timeout=10)
    try:
        sock.settimeout(10)
        assert sock.recv(200).startswith(b"* OK")
    finally:
        sock.close()
    # Dovecot's LMTP port is listening, but not in the ruleset.
    with pytest.raises(ProxyError, match="Connection not allowed by ruleset") as info:
        proxy.connect(dest_host=dovecot.host, dest_port=dovecot.lmtp_port, timeout=10)
    assert info.value.error_code == 2


async def test_dante_asyncio_client(dante: DanteServer, dovecot: DovecotServer) -> None:
    proxy = AsyncProxy.from_url(dante.url)
    sock = await proxy.connect(dest_host=dovecot.host, dest_port=dovecot.pop3_port, timeout=10)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"+OK")
    finally:
        writer.close()
    with pytest.raises(ProxyError, match="Connection not allowed by ruleset"):
        await proxy.connect(dest_host="127.0.0.1", dest_port=dovecot.auth_port, timeout=10)


# -- scripted SMTP servers ------------------------------------------------------------------


def test_scripted_421_on_connect(scripted_smtp: Callable[..., ScriptedSMTPServer]) -> None:
    server = scripted_smtp(greeting="421 4.3.2 Service not available")
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP(server.host, server.port, timeout=5)
    assert info.value.smtp_code == 421


def test_scripted_per_recipient_replies(
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    server = scripted_smtp(
        rcpt_replies={
            "full@example.com": "452 4.2.2 Mailbox full",
            "gone@example.com": "550 5.1.1 No such user",
        }
    )
    with smtplib.SMTP(server.host, server.port, timeout=5) as s:
        refused = s.sendmail(
            "a@example.test",
            ["ok@example.com", "full@example.com", "gone@example.com"],
            _mail("partial", "ok@example.com"),
        )
    assert refused["full@example.com"][0] == 452
    assert refused["gone@example.com"][0] == 550
    [msg] = server.wait_for_messages(1)
    assert msg.rcpt_tos == ("ok@example.com",)
    assert b"Subject: partial" in msg.data


def test_scripted_drop_during_data(scripted_smtp: Callable[..., ScriptedSMTPServer]) -> None:
    server = scripted_smtp(drop_during_data=True)
    s = smtplib.SMTP(server.host, server.port, timeout=5)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        s.sendmail("a@example.test", ["b@example.com"], _mail("dropped", "b@example.com"))
    [msg] = server.wait_for_messages(1)
    assert msg.dropped
    assert b"Subject: dropped" in msg.data


def test_scripted_slow_reply_times_out(scripted_smtp: Callable[..., ScriptedSMTPServer]) -> None:
    server = scripted_smtp(delays={"MAIL": 3})
    s = smtplib.SMTP(server.host, server.port, timeout=0.5)
    s.ehlo()
    began = time.monotonic()
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        s.mail("a@example.test")
    assert time.monotonic() - began < 2.5


def test_scripted_starttls_auth(
    scripted_smtp: Callable[..., ScriptedSMTPServer], server_cert: ServerCert, test_ca: TestCA
) -> None:
    server = scripted_smtp(
        tls=server_cert,
        require_starttls=True,
        credentials={"u@example.com": "pw"},
        auth_required=True,
    )
    with (
        smtplib.SMTP(server.host, server.port, timeout=5) as s,
        pytest.raises(smtplib.SMTPSenderRefused),
    ):
        s.sendmail("u@example.com", ["x@example.com"], b"Subject: x\r\n\r\nx\r\n")
    with smtplib.SMTP(server.host, server.port, timeout=5) as s:
        s.starttls(context=test_ca.client_context())
        s.user, s.password = "u@example.com", "pw"
        s.ehlo()
        assert s.auth("CRAM-MD5", s.auth_cram_md5)[0] == 235
        s.sendmail("u@example.com", ["x@example.com"], b"Subject: tls\r\n\r\nx\r\n")
    [msg] = server.wait_for_messages(1)
    assert msg.tls
    assert msg.auth_user == "u@example.com"


async def test_scripted_server_from_async_test(
    scripted_smtp: Callable[..., ScriptedSMTPServer],
) -> None:
    import aiosmtplib

    server = scripted_smtp(rcpt_replies={"bad@example.com": "550 5.1.1 nope"})
    client = aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=5)
    await client.connect()
    try:
        errors, _ = await client.sendmail(
            "a@example.test", ["ok@example.com", "bad@example.com"], b"Subject: a\r\n\r\nx\r\n"
        )
        assert errors["bad@example.com"][0] == 550
    finally:
        await client.quit()
    [msg] = await server.wait_for_messages_async(1, timeout=5)
    assert msg.rcpt_tos == ("ok@example.com",)


# -- supervision ------------------------------------------------------------------------------


def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    """Even a SIGKILLed test process leaves no server behind (stdin EOF -> supervisor)."""
    code = textwrap.dedent(
        """
        import sys, time
        from tests.servers import DanteServer
        d = DanteServer().start()
        print(d._process.main_pid(), d.workdir, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pid_text, workdir_text = proc.stdout.readline().split()
        danted_pid, workdir = int(pid_text), Path(workdir_text)
        os.kill(danted_pid, 0)  # running
        assert workdir.is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(danted_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"danted {danted_pid} still running after its parent was killed")
    deadline = time.monotonic() + 10
    while workdir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workdir.exists(), "the orphaned server's temporary directory was not removed"
