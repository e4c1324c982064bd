"""flowrt test pop3 against a real Dovecot on loopback (and Dante for the on-premise route)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.connectivity.conftest import Run, add_login
from tests.connectivity.mail_helpers import MAIL, assert_no_secret, secret_forms, stages
from tests.servers import DanteServer, DovecotServer, MailboxUser


@pytest.mark.usefixtures("box")
def test_empty_keystore_fails_then_import_fixes_it(flowrt: Run, dovecot: DovecotServer) -> None:
    target = f"127.0.0.1:{dovecot.pop3s_port}"
    args = ("test", "pop3", target, "--protection", "pop3s", "--credential", "box")
    first = flowrt(*args, "--check-mailbox")
    assert first.exit_code == 1
    assert "MessagingException: Could not connect to POP3 host: 127.0.0.1, port:" in first.output
    assert "SSLHandshakeException: PKIX path building failed" in first.output
    assert "issued by CN=flowrt Test Intermediate CA" in first.output
    assert f"run `flowrt test pop3 {target} --protection pop3s --import`" in first.output
    assert "not trusted by the keystore" in first.output
    assert "greeting" not in stages(first.output)  # implicit TLS: nothing was said yet

    fixed = flowrt(*args, "--check-mailbox", "--import")
    assert fixed.exit_code == 0, fixed.output
    assert "imported flowrt-test-intermediate-ca" in fixed.output

    again = flowrt(*args, "--check-mailbox")
    assert again.exit_code == 0, again.output
    assert "issued by a trusted certificate (keystore alias flowrt-test-intermediate-ca)" in (
        again.output
    )


@pytest.mark.usefixtures("trusted")
def test_stls_user_pass_counts_and_deletes_nothing(
    flowrt: Run, dovecot: DovecotServer, box: MailboxUser
) -> None:
    for subject in (b"one", b"two", b"three"):
        dovecot.append(box.address, "INBOX", MAIL % subject)
    before = dovecot.messages(box.address)
    result = flowrt(
        "test", "pop3", f"127.0.0.1:{dovecot.pop3_port}", "--credential", "box", "--check-mailbox"
    )
    assert result.exit_code == 0, result.output
    assert stages(result.output) == [
        "connect",
        "greeting",
        "capabilities",
        "tls",
        "certificate",
        "capabilities",
        "auth",
        "mailbox",
        "logout",
    ]
    caps = [line for line in result.output.splitlines() if line.split()[:1] == ["capabilities"]]
    assert "STLS" in caps[0] and "STLS" not in caps[1]
    assert f"USER/PASS as {box.address}" in result.output
    assert "3 message(s)" in result.output and "nothing deleted" in result.output
    # every mail is still there, unchanged (Dovecot's POP3 login only drops \Recent)
    assert _without_recent(dovecot.messages(box.address)) == _without_recent(before)


def _without_recent(
    messages: list[tuple[int, tuple[str, ...], bytes]],
) -> list[tuple[int, tuple[str, ...], bytes]]:
    return [(uid, tuple(f for f in flags if f != "\\Recent"), raw) for uid, flags, raw in messages]


@pytest.mark.usefixtures("trusted")
def test_pop3s_cram_md5(flowrt: Run, dovecot: DovecotServer, box: MailboxUser) -> None:
    dovecot.append(box.address, "INBOX", MAIL % b"one")
    result = flowrt(
        "test",
        "pop3",
        f"127.0.0.1:{dovecot.pop3s_port}",
        "--protection",
        "pop3s",
        "--auth",
        "encrypted",
        "--credential",
        "box",
        "--check-mailbox",
    )
    assert result.exit_code == 0, result.output
    assert stages(result.output)[:4] == ["connect", "tls", "certificate", "greeting"]
    assert f"AUTH CRAM-MD5 as {box.address}" in result.output
    assert "1 message(s)" in result.output


@pytest.mark.usefixtures("box")
def test_clear_text_link(flowrt: Run, dovecot: DovecotServer) -> None:
    base = ("test", "pop3", f"127.0.0.1:{dovecot.pop3_port}", "--protection", "off")
    refused = flowrt(*base, "--credential", "box", "--check-mailbox")
    assert refused.exit_code == 1
    assert (
        "refusing to send the password of credential 'box' in clear: the connection to "
        f"127.0.0.1:{dovecot.pop3_port} is not encrypted (protection off)"
    ) in refused.output
    assert "use protection starttls-mandatory or pop3s" in refused.output
    cram = flowrt(*base, "--auth", "encrypted", "--credential", "box", "--check-mailbox")
    assert cram.exit_code == 0, cram.output
    assert "tls" not in stages(cram.output)
    allowed = flowrt(*base, "--credential", "box", "--allow-plaintext-auth", "--check-mailbox")
    assert allowed.exit_code == 0, allowed.output


def test_starttls_mandatory_against_a_server_without_stls(
    flowrt: Run, dovecot_no_tls: DovecotServer
) -> None:
    user = dovecot_no_tls.new_user()
    add_login(flowrt, "box", user.address, user.password)
    target = f"127.0.0.1:{dovecot_no_tls.pop3_port}"
    result = flowrt("test", "pop3", target, "--credential", "box", "--check-mailbox")
    assert result.exit_code == 1
    assert "does not offer STARTTLS (STLS); protection starttls-mandatory does not" in (
        result.output
    )
    assert 'address "127.0.0.1:995", protection pop3s' in result.output
    assert "auth" not in stages(result.output)
    optional = flowrt(
        "test",
        "pop3",
        target,
        "--protection",
        "starttls-optional",
        "--auth",
        "encrypted",
        "--credential",
        "box",
        "--check-mailbox",
    )
    assert optional.exit_code == 0, optional.output  # CRAM-MD5 needs no TLS


@pytest.mark.usefixtures("trusted", "box")
def test_through_dante_on_premise_location(
    flowrt: Run, dovecot: DovecotServer, dante: DanteServer
) -> None:
    added = flowrt("locations", "add", "plant-1", "--proxy", f"127.0.0.1:{dante.port}")
    assert added.exit_code == 0, added.output
    for port, protection in (
        (dovecot.pop3_port, "starttls-mandatory"),
        (dovecot.pop3s_port, "pop3s"),
    ):
        result = flowrt(
            "test",
            "pop3",
            f"127.0.0.1:{port}",
            "--protection",
            protection,
            "--proxy",
            "on-premise",
            "--location",
            "plant-1",
            "--credential",
            "box",
            "--check-mailbox",
        )
        assert result.exit_code == 0, result.output
        assert f"(location plant-1 via 127.0.0.1:{dante.port})" in result.output


def test_download_after_a_failed_validation(
    flowrt: Run, dovecot: DovecotServer, tmp_path: Path
) -> None:
    archive = tmp_path / "chain.zip"
    result = flowrt(
        "test", "pop3", f"127.0.0.1:{dovecot.pop3s_port}", "--protection", "pop3s",
        "--download", str(archive),
    )  # fmt: skip
    assert result.exit_code == 1  # not trusted; the chain was read on a second connection
    with zipfile.ZipFile(archive) as files:
        assert len(files.namelist()) == 2


@pytest.mark.usefixtures("trusted")
def test_json_output(flowrt: Run, dovecot: DovecotServer, box: MailboxUser) -> None:
    dovecot.append(box.address, "INBOX", MAIL % b"one")
    dovecot.append(box.address, "INBOX", MAIL % b"two")
    target = f"127.0.0.1:{dovecot.pop3_port}"
    result = flowrt(
        "test", "pop3", target, "--credential", "box", "--check-mailbox", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] is True and doc["test"] == f"pop3 {target} (starttls-mandatory)"
    assert doc["results"]["mailbox"]["total"] == 2 and doc["results"]["mailbox"]["size"] > 0
    assert doc["chain"][1]["trust"] == "issued by a trusted certificate (keystore alias test-root)"
    add_login(flowrt, "wrong", box.address, "not-the-password")
    failed = json.loads(
        flowrt("test", "pop3", target, "--credential", "wrong", "--format", "json").output
    )
    assert failed["ok"] is False
    levels = failed["error"]["levels"]
    assert [lv["type"] for lv in levels] == ["AuthenticationFailedException"]
    assert "Authentication failed" in levels[0]["message"]
    assert failed["stages"][-1]["name"] == "auth" and failed["stages"][-1]["ok"] is False


def test_usage_errors(flowrt: Run) -> None:
    no_login = flowrt("test", "pop3", "127.0.0.1:1", "--check-mailbox")
    assert no_login.exit_code == 2
    assert "--check-mailbox needs a login: add --credential NAME" in no_login.output
    assert flowrt("test", "pop3", "127.0.0.1:1", "--list-folders").exit_code == 2
    assert flowrt("test", "pop3", "127.0.0.1:1", "--protection", "imaps").exit_code == 2


@pytest.mark.usefixtures("trusted")
def test_password_appears_in_no_file_and_no_output(
    flowrt: Run, tenant: Path, dovecot: DovecotServer, box: MailboxUser
) -> None:
    add_login(flowrt, "wrong", box.address, box.password + "-not")
    plain, tls = f"127.0.0.1:{dovecot.pop3_port}", f"127.0.0.1:{dovecot.pop3s_port}"
    outputs = [
        flowrt("test", "pop3", plain, "--credential", "box", "--check-mailbox").output,
        flowrt(
            "test", "pop3", tls, "--protection", "pop3s", "--credential", "box",
            "--check-mailbox", "--format", "json",
        ).output,
        flowrt(
            "test", "pop3", plain, "--protection", "off", "--credential", "box",
            "--allow-plaintext-auth", "--check-mailbox",
        ).output,
        flowrt("test", "pop3", plain, "--credential", "wrong", "--check-mailbox").output,
        flowrt("credentials", "list").output,
        flowrt("credentials", "show", "box").output,
    ]  # fmt: skip
    assert "verdict: OK" in outputs[0] and "verdict: OK" in outputs[2]
    assert "AuthenticationFailedException" in outputs[3]
    needles = secret_forms(box.password, box.address)
    needles += secret_forms(box.password + "-not", box.address)
    assert_no_secret(tenant, outputs, needles)
