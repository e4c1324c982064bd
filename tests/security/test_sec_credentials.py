"""The credential store: encryption, tampering, the API's masked secrets, and the CLI."""

from __future__ import annotations

import copy
import json
import logging
import pickle

import pytest

from flowrt.errors import CredentialError
from flowrt.security.credentials import (
    MAGIC,
    CredentialStore,
    OAuth2ClientCredentials,
    SecureParameter,
    UserCredential,
    edit_credentials,
)
from flowrt.security.masterkey import generate_master_key, load_master_key
from flowrt.security.secret import Secret

# ----------------------------------------------------------------------------- Secret


def test_secret_never_shows_its_value(caplog):
    secret = Secret("hunter2-very-secret")
    assert secret.reveal() == "hunter2-very-secret"
    for text in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "{}".format(secret),  # noqa: UP032 - str.format must mask too
        "%s" % (secret,),  # noqa: UP031 - the old style must mask too
        f"{secret:>30}",
    ):
        assert "hunter2" not in text
    credential = UserCredential("smtp", "me@example.com", secret)
    assert "hunter2" not in repr(credential) and "hunter2" not in str(credential)
    assert "me@example.com" in repr(credential)
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("using %s / %r", credential, credential)
    assert "hunter2" not in caplog.text
    error = CredentialError(f"login failed for {credential}")
    assert "hunter2" not in str(error)
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert copy.deepcopy(credential).password.reveal() == "hunter2-very-secret"
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert json.dumps({"s": secret}, default=str) == '{"s": "********"}'


def test_oauth_and_parameter_reprs_are_masked():
    oauth = OAuth2ClientCredentials("o", "https://idp/token", "client", Secret("cs-XYZ"), "mail")
    param = SecureParameter("p", Secret("token-XYZ"))
    assert "XYZ" not in repr(oauth) and "XYZ" not in repr(param)


# ----------------------------------------------------------------------------- store


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "credentials.enc"


def test_round_trip(store_path):
    key = generate_master_key()
    store = CredentialStore.empty(store_path, key)
    store.put(UserCredential("smtp-out", "me@example.com", Secret("pw1")))
    store.put(SecureParameter("token", Secret("t0ken")))
    store.put(OAuth2ClientCredentials("o365", "https://login/token", "cid", Secret("cs"), None))
    store.save()
    data = store_path.read_bytes()
    assert data.startswith(MAGIC)
    for clear in (b"pw1", b"t0ken", b"me@example.com", b"smtp-out"):
        assert clear not in data
    again = CredentialStore.load(store_path, key)
    assert [c.name for c in again] == ["o365", "smtp-out", "token"]
    login = again.get_user("smtp-out")
    assert (login.user, login.password.reveal()) == ("me@example.com", "pw1")
    assert again.get("token").value.reveal() == "t0ken"
    assert again.get("o365").client_secret.reveal() == "cs"
    # A fresh nonce and salt every write: same content, different bytes.
    again.save()
    assert store_path.read_bytes() != data


def test_wrong_master_key(store_path):
    store = CredentialStore.empty(store_path, generate_master_key())
    store.put(UserCredential("a", "u", Secret("p")))
    store.save()
    with pytest.raises(CredentialError) as info:
        CredentialStore.load(store_path, generate_master_key())
    assert "cannot be decrypted with this master key, or it was modified" in str(info.value)
    assert str(store_path) in str(info.value)


@pytest.mark.parametrize("where", ["magic", "version", "salt", "nonce", "ciphertext", "tag"])
def test_any_flipped_byte_is_detected(store_path, where):
    key = generate_master_key()
    store = CredentialStore.empty(store_path, key)
    store.put(UserCredential("a", "u", Secret("p")))
    store.save()
    data = bytearray(store_path.read_bytes())
    offset = {
        "magic": 0,
        "version": 8,
        "salt": 12,
        "nonce": 30,
        "ciphertext": 40,
        "tag": len(data) - 1,
    }[where]
    data[offset] ^= 0x40
    store_path.write_bytes(bytes(data))
    with pytest.raises(CredentialError) as info:
        CredentialStore.load(store_path, key)
    message = str(info.value)
    if where == "magic":
        assert "is not a flowrt credential store" in message
    elif where == "version":
        assert "format version" in message
    else:
        assert "cannot be decrypted with this master key, or it was modified" in message


@pytest.mark.parametrize("keep", [0, 5, 20, 37, 52, -1])
def test_truncated_store(store_path, keep):
    key = generate_master_key()
    store = CredentialStore.empty(store_path, key)
    store.put(UserCredential("a", "u", Secret("p")))
    store.save()
    data = store_path.read_bytes()
    store_path.write_bytes(data[:keep])
    with pytest.raises(CredentialError, match="cannot be decrypted with this master key"):
        CredentialStore.load(store_path, key)


def test_names_and_kinds(store_path):
    store = CredentialStore.empty(store_path, generate_master_key())
    store.put(UserCredential("x" * 150, "u", Secret("p")))
    for bad in ("", "x" * 151, "with space", "tab\tname", "nl\nname", "ctl\x07"):
        with pytest.raises(CredentialError):
            store.put(UserCredential(bad, "u", Secret("p")))
    store.put(SecureParameter("param", Secret("v")))
    with pytest.raises(CredentialError, match="is of kind secure-parameter"):
        store.get_user("param")
    with pytest.raises(CredentialError, match="no credential named 'ghost'") as info:
        store.get("ghost")
    assert "flowrt credentials list" in (info.value.hint or "")
    with pytest.raises(CredentialError, match="already exists"):
        store.put(SecureParameter("param", Secret("w")))
    store.put(SecureParameter("param", Secret("w")), replace=True)
    assert store.get("param").value.reveal() == "w"


def test_edit_changes_nothing_when_the_body_fails(flowrt):
    key = load_master_key(flowrt.tenant)
    before = flowrt.snapshot()
    with pytest.raises(RuntimeError), edit_credentials(flowrt.tenant, key) as store:
        store.put(UserCredential("a", "u", Secret("p")))
        raise RuntimeError("boom")
    assert flowrt.snapshot() == before


# ----------------------------------------------------------------------------- CLI


def test_cli_add_list_show_delete(flowrt):
    result = flowrt.ok(
        "credentials",
        "add",
        "smtp-out",
        "--user",
        "me@example.com",
        "--password-stdin",
        input="s3cret\n",
    )
    assert "added user credential smtp-out" in result.output
    flowrt.ok(
        "credentials", "add", "token", "--kind", "secure-parameter", "--password-stdin", input="tok"
    )
    flowrt.ok(
        "credentials",
        "add",
        "o365",
        "--kind",
        "oauth2-client-credentials",
        "--token-url",
        "https://login.example.com/token",
        "--client-id",
        "cid",
        "--scope",
        "https://outlook.office365.com/.default",
        "--secret-stdin",
        input="cs\n",
    )
    text = flowrt.ok("credentials", "list").output
    assert text.splitlines()[0].split() == ["NAME", "KIND", "USER", "CHANGED"]
    assert "smtp-out" in text and "me@example.com" in text and "secure-parameter" in text
    rows = json.loads(flowrt.ok("credentials", "list", "--format", "json").stdout)
    assert [r["name"] for r in rows] == ["o365", "smtp-out", "token"]
    assert rows[0]["client_id"] == "cid" and rows[0]["token_url"].startswith("https://")
    shown = flowrt.ok("credentials", "show", "smtp-out").output
    assert "user: me@example.com" in shown and "kind: user" in shown and "changed:" in shown
    data = json.loads(flowrt.ok("credentials", "show", "o365", "--format", "json").stdout)
    assert data["scope"] == "https://outlook.office365.com/.default"
    for result in flowrt.results:
        for secret in ("s3cret", "tok\n", "cs\n"):
            assert secret.strip() not in result.output.replace("token", "")
    store = CredentialStore.open(flowrt.tenant)
    assert store.get_user("smtp-out").password.reveal() == "s3cret"  # one newline stripped
    assert store.get("token").value.reveal() == "tok"
    assert "deleted credential token" in flowrt.ok("credentials", "delete", "token").output
    assert "token" not in CredentialStore.open(flowrt.tenant)


def test_cli_replace(flowrt):
    flowrt.ok("credentials", "add", "c", "--user", "u1", "--password-stdin", input="p1")
    before = flowrt.snapshot()
    result = flowrt.fails("credentials", "add", "c", "--user", "u2", "--password-stdin", input="p2")
    assert "a credential named 'c' already exists" in result.output
    assert "hint: use --replace" in result.output
    assert flowrt.snapshot() == before
    result = flowrt.ok(
        "credentials", "add", "c", "--user", "u2", "--password-stdin", "--replace", input="p2"
    )
    assert "replaced user credential c" in result.output
    login = CredentialStore.open(flowrt.tenant).get_user("c")
    assert (login.user, login.password.reveal()) == ("u2", "p2")


def test_cli_unknown_credential(flowrt):
    before = flowrt.snapshot()
    for args in (("show", "ghost"), ("delete", "ghost")):
        result = flowrt.fails("credentials", *args)
        assert "no credential named 'ghost'" in result.output
        assert "hint: see `flowrt credentials list`" in result.output
    assert flowrt.snapshot() == before


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("c",), "p", "a user credential needs --user"),
        (("c", "--kind", "secure-parameter", "--user", "u"), "p", "--user does not apply"),
        (
            ("c", "--kind", "oauth2-client-credentials", "--client-id", "x"),
            "p",
            "needs --token-url and --client-id",
        ),
        (
            (
                "c",
                "--kind",
                "oauth2-client-credentials",
                "--client-id",
                "x",
                "--token-url",
                "ftp://x",
            ),
            "p",
            "is not an http(s) URL",
        ),
        (("c", "--user", "u"), "p", "no password given"),  # no --password-stdin, no terminal
        (("c", "--user", "u", "--password-stdin"), "", "the password is empty"),
        (("c", "--user", "u", "--password-stdin"), "two\nlines\n", "contains a line break"),
        (("bad name", "--user", "u", "--password-stdin"), "p", None),
    ],
)
def test_cli_add_usage_errors(flowrt, args, stdin, message):
    before = flowrt.snapshot()
    result = flowrt("credentials", "add", *args, input=stdin)
    assert result.exit_code in (1, 2)
    if message:
        assert message in result.output
    assert flowrt.snapshot() == before


def test_cli_wrong_master_key_and_tampered_store(flowrt):
    flowrt.ok("credentials", "add", "c", "--user", "u", "--password-stdin", input="p")
    path = flowrt.root / "credentials.enc"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    result = flowrt.fails("credentials", "list")
    assert "cannot be decrypted with this master key, or it was modified" in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_cli_prompts_without_echo_on_a_terminal(flowrt, monkeypatch):
    monkeypatch.setattr("flowrt.cli.credentials._stdin_is_terminal", lambda: True)
    result = flowrt.ok("credentials", "add", "c", "--user", "u", input="Pr0mpted\nPr0mpted\n")
    assert "Pr0mpted" not in result.output  # no echo
    assert "Password" in result.output and "Repeat for confirmation" in result.output
    assert CredentialStore.open(flowrt.tenant).get_user("c").password.reveal() == "Pr0mpted"
    before = flowrt.snapshot()
    result = flowrt("credentials", "add", "d", "--user", "u", input="one\ntwo\n")
    assert result.exit_code != 0
    assert "do not match" in result.output
    assert flowrt.snapshot() == before
