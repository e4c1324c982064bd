"""flowrt test imap against a real Dovecot on loopback (and Dante for the on-premise route)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.connectivity.conftest import Run, add_login, trust
from tests.connectivity.mail_helpers import (
    MAIL,
    assert_no_secret,
    failed_stage,
    secret_forms,
    stages,
)
from tests.servers import DanteServer, DovecotServer, MailboxUser, TestCA, free_port


@pytest.mark.usefixtures("box")
def test_empty_keystore_fails_then_import_fixes_it(flowrt: Run, dovecot: DovecotServer) -> None:
    target = f"127.0.0.1:{dovecot.imap_port}"
    args = ("test", "imap", target, "--credential", "box", "--list-folders")
    first = flowrt(*args)
    assert first.exit_code == 1
    assert "MessagingException: Could not connect to IMAP host: 127.0.0.1, port:" in first.output
    assert "nested exception is:" in first.output
    assert "SSLHandshakeException: PKIX path building failed" in first.output
    assert "issued by CN=flowrt Test Intermediate CA" in first.output
    assert "hint: the tenant keystore has no certificate for CN=flowrt Test Intermediate CA" in (
        first.output
    )
    assert f"flowrt test imap {target} --protection starttls-mandatory --import" in first.output
    assert "not trusted by the keystore" in first.output
    assert failed_stage(first.output) == "certificate"
    assert "auth" not in stages(first.output)
    assert first.output.rstrip().splitlines()[-1].startswith("verdict: FAILED")

    fixed = flowrt(*args, "--import", "mailroot")
    assert fixed.exit_code == 0, fixed.output
    assert "imported mailroot" in fixed.output
    assert fixed.output.rstrip().splitlines()[-1].startswith("verdict: OK")

    again = flowrt(*args)
    assert again.exit_code == 0, again.output
    assert "issued by a trusted certificate (keystore alias mailroot)" in again.output
    assert "mailroot" in flowrt("keystore", "list", "--format", "json").output


@pytest.mark.usefixtures("trusted")
def test_starttls_login_lists_folders(
    flowrt: Run, dovecot: DovecotServer, box: MailboxUser
) -> None:
    dovecot.create_folder(box.address, "Archive")
    dovecot.create_folder(box.address, "Processed")
    result = flowrt(
        "test", "imap", f"127.0.0.1:{dovecot.imap_port}", "--credential", "box", "--list-folders"
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
        "folders",
        "logout",
    ]
    lines = result.output.splitlines()
    before, after = [line for line in lines if line.split()[:1] == ["capabilities"]]
    assert "STARTTLS" in before and "STARTTLS" not in after  # asked again after TLS
    assert f"LOGIN as {box.address}" in result.output
    assert "3 folder(s)" in result.output
    for name in ("INBOX", "Archive", "Processed"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert result.output.rstrip().endswith(
        f"verdict: OK: imap 127.0.0.1:{dovecot.imap_port} (starttls-mandatory)"
    )


@pytest.mark.usefixtures("trusted")
def test_imaps_cram_md5_checks_a_mailbox_without_changing_it(
    flowrt: Run, dovecot: DovecotServer, box: MailboxUser
) -> None:
    dovecot.append(box.address, "Invoices", MAIL % b"one")
    dovecot.append(box.address, "Invoices", MAIL % b"two", flags=["\\Seen"])
    dovecot.append(box.address, "Invoices", MAIL % b"three")
    before = dovecot.messages(box.address, "Invoices")
    result = flowrt(
        "test",
        "imap",
        f"127.0.0.1:{dovecot.imaps_port}",
        "--protection",
        "imaps",
        "--auth",
        "encrypted",
        "--credential",
        "box",
        "--check-mailbox",
        "Invoices",
    )
    assert result.exit_code == 0, result.output
    assert stages(result.output)[:3] == ["connect", "tls", "certificate"]
    assert f"AUTHENTICATE CRAM-MD5 as {box.address}" in result.output
    assert "Invoices: 3 message(s), 2 unread" in result.output
    assert dovecot.messages(box.address, "Invoices") == before  # no flag, no message changed


@pytest.mark.usefixtures("trusted")
def test_plain_login_with_non_ascii_password_uses_authenticate_plain(
    flowrt: Run, dovecot: DovecotServer
) -> None:
    address = f"umlaut-{secrets.token_hex(4)}@example.com"
    dovecot.add_user(address, "Pässwörter-sind-geheim")
    add_login(flowrt, "box", address, "Pässwörter-sind-geheim")
    result = flowrt(
        "test",
        "imap",
        f"127.0.0.1:{dovecot.imaps_port}",
        "--protection",
        "imaps",
        "--credential",
        "box",
        "--check-mailbox",
        "INBOX",
    )
    assert result.exit_code == 0, result.output
    assert f"AUTHENTICATE PLAIN as {address}" in result.output
    assert "INBOX: 0 message(s), 0 unread" in result.output


@pytest.mark.usefixtures("box")
def test_clear_text_link_plain_refused_cram_md5_and_allowed_plain_work(
    flowrt: Run, dovecot: DovecotServer
) -> None:
    base = ("test", "imap", f"127.0.0.1:{dovecot.imap_port}", "--protection", "off")
    refused = flowrt(*base, "--credential", "box", "--list-folders")
    assert refused.exit_code == 1
    assert (
        "refusing to send the password of credential 'box' in clear: the connection to "
        f"127.0.0.1:{dovecot.imap_port} is not encrypted (protection off)"
    ) in refused.output
    assert "allow-plaintext-auth only where the link is protected" in refused.output
    assert failed_stage(refused.output) == "auth"
    assert "tls" not in stages(refused.output)

    cram = flowrt(*base, "--auth", "encrypted", "--credential", "box", "--list-folders")
    assert cram.exit_code == 0, cram.output
    assert "AUTHENTICATE CRAM-MD5" in cram.output and "tls" not in stages(cram.output)

    allowed = flowrt(*base, "--credential", "box", "--allow-plaintext-auth", "--list-folders")
    assert allowed.exit_code == 0, allowed.output
    assert "LOGIN as" in allowed.output


def test_starttls_mandatory_against_a_server_without_starttls(
    flowrt: Run, dovecot_no_tls: DovecotServer, new_mailbox_user: Callable[..., MailboxUser]
) -> None:
    user = dovecot_no_tls.new_user()
    add_login(flowrt, "box", user.address, user.password)
    target = f"127.0.0.1:{dovecot_no_tls.imap_port}"
    mandatory = flowrt("test", "imap", target, "--credential", "box", "--list-folders")
    assert mandatory.exit_code == 1
    assert "does not offer STARTTLS; protection starttls-mandatory does not" in mandatory.output
    assert "hint: a missing STARTTLS may be the server's configuration" in mandatory.output
    assert failed_stage(mandatory.output) == "starttls"
    assert "auth" not in stages(mandatory.output)

    optional = flowrt(
        "test",
        "imap",
        target,
        "--protection",
        "starttls-optional",
        "--credential",
        "box",
        "--list-folders",
    )
    assert optional.exit_code == 1  # goes on in clear text, where plain auth is refused
    assert "refusing to send the password of credential 'box' in clear" in optional.output


@pytest.mark.usefixtures("trusted")
def test_missing_folder_names_similar_folders(
    flowrt: Run, dovecot: DovecotServer, box: MailboxUser
) -> None:
    dovecot.create_folder(box.address, "Archive")
    dovecot.create_folder(box.address, "Invoices")
    result = flowrt(
        "test",
        "imap",
        f"127.0.0.1:{dovecot.imap_port}",
        "--credential",
        "box",
        "--check-mailbox",
        "archive",
    )
    assert result.exit_code == 1
    assert "FolderNotFoundException: folder 'archive' not found in the mailbox of" in (
        result.output
    )
    assert "hint: the mailbox has no folder 'archive'; similar folders: Archive" in result.output
    assert failed_stage(result.output) == "mailbox"
    assert sorted(dovecot.folders(box.address)) == ["Archive", "INBOX", "Invoices"]


@pytest.mark.usefixtures("trusted", "box")
def test_through_dante_on_premise_location(
    flowrt: Run, dovecot: DovecotServer, dante: DanteServer
) -> None:
    added = flowrt("locations", "add", "plant-1", "--proxy", f"127.0.0.1:{dante.port}")
    assert added.exit_code == 0, added.output
    via = ("--proxy", "on-premise", "--location", "plant-1")
    result = flowrt(
        "test",
        "imap",
        f"127.0.0.1:{dovecot.imap_port}",
        *via,
        "--credential",
        "box",
        "--check-mailbox",
        "INBOX",
    )
    assert result.exit_code == 0, result.output
    assert f"(location plant-1 via 127.0.0.1:{dante.port})" in result.output
    assert "verdict: OK" in result.output and "via location plant-1" in result.output

    blocked = flowrt("test", "imap", f"127.0.0.1:{free_port()}", *via, "--timeout", "5s")
    assert blocked.exit_code == 1
    assert "SocksException: Connection not allowed by ruleset" in blocked.output
    assert "hint: add a mapping for" in blocked.output

    unknown = flowrt(
        "test", "imap", f"127.0.0.1:{dovecot.imap_port}", "--proxy", "on-premise", "--location", "x"
    )
    assert unknown.exit_code == 1
    assert "SocksException: unknown location ID 'x'" in unknown.output
    assert "hint: register it with `flowrt locations add x" in unknown.output


def test_json_output(
    flowrt: Run, dovecot: DovecotServer, box: MailboxUser, test_ca: TestCA, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{dovecot.imaps_port}"
    args = ("test", "imap", target, "--protection", "imaps", "--credential", "box")
    failed = json.loads(flowrt(*args, "--list-folders", "--format", "json").output)
    assert failed["ok"] is False
    assert [lv["type"] for lv in failed["error"]["levels"]] == [
        "MessagingException",
        "SSLHandshakeException",
    ]
    assert failed["error"]["hint"].startswith("the tenant keystore has no certificate for")
    assert len(failed["chain"]) == 2 and failed["chain"][1]["trust"] == (
        "not trusted by the keystore"
    )

    trust(flowrt, test_ca, tmp_path)
    dovecot.append(box.address, "INBOX", MAIL % b"hello")
    result = flowrt(*args, "--check-mailbox", "INBOX", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] is True and doc["error"] is None
    assert doc["test"] == f"imap {target} (imaps)"
    assert [s["name"] for s in doc["stages"]] == [
        "connect",
        "tls",
        "certificate",
        "greeting",
        "capabilities",
        "auth",
        "mailbox",
        "logout",
    ]
    assert doc["results"]["mailbox"]["folder"] == "INBOX"
    assert doc["results"]["mailbox"]["total"] == 1
    assert doc["results"]["mailbox"]["unread"] == 1
    folders = json.loads(flowrt(*args, "--list-folders", "--format", "json").output)
    assert {"name": "INBOX", "attributes": ["\\HasNoChildren"]} in folders["results"]["folders"]


@pytest.mark.usefixtures("trusted")
def test_without_credential_only_connection_and_tls(flowrt: Run, dovecot: DovecotServer) -> None:
    result = flowrt("test", "imap", f"127.0.0.1:{dovecot.imap_port}")
    assert result.exit_code == 0, result.output
    assert "auth" not in stages(result.output) and "certificate" in stages(result.output)


def test_usage_errors(flowrt: Run) -> None:
    no_login = flowrt("test", "imap", "127.0.0.1:1", "--list-folders")
    assert no_login.exit_code == 2
    assert "--list-folders needs a login: add --credential NAME" in no_login.output
    both = flowrt(
        "test", "imap", "127.0.0.1:1", "--credential", "x", "--list-folders", "--check-mailbox", "A"
    )
    assert both.exit_code == 2
    no_credential = flowrt("test", "imap", "127.0.0.1:1", "--auth", "encrypted")
    assert no_credential.exit_code == 2
    assert "--auth encrypted needs --credential NAME" in no_credential.output
    bad = flowrt("test", "imap", "127.0.0.1:1", "--protection", "pop3s")
    assert bad.exit_code == 2


@pytest.mark.usefixtures("trusted")
def test_password_appears_in_no_file_and_no_output(
    flowrt: Run, tenant: Path, dovecot: DovecotServer, box: MailboxUser
) -> None:
    add_login(flowrt, "wrong", box.address, box.password + "-not")
    target = f"127.0.0.1:{dovecot.imap_port}"
    outputs = [
        flowrt("test", "imap", target, "--credential", "box", "--list-folders").output,
        flowrt(
            "test", "imap", target, "--credential", "box", "--check-mailbox", "INBOX", "--format",
            "json",
        ).output,
        flowrt(
            "test", "imap", target, "--protection", "off", "--auth", "encrypted",
            "--credential", "box", "--check-mailbox", "INBOX",
        ).output,
        flowrt("test", "imap", target, "--credential", "wrong", "--list-folders").output,
        flowrt("credentials", "list").output,
        flowrt("credentials", "show", "box").output,
        flowrt("credentials", "list", "--format", "json").output,
    ]  # fmt: skip
    assert "verdict: OK" in outputs[0] and "AuthenticationFailedException" in outputs[3]
    needles = secret_forms(box.password, box.address)
    needles += secret_forms(box.password + "-not", box.address)
    assert_no_secret(tenant, outputs, needles)
