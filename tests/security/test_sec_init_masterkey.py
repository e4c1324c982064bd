"""`flowrt init` and the master key: where it comes from, and when it is refused."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from flowrt.errors import CredentialError
from flowrt.security.credentials import CredentialStore
from flowrt.security.keystore import Keystore
from flowrt.security.masterkey import (
    MasterKey,
    generate_master_key,
    load_master_key,
    master_key_from_env_value,
)
from flowrt.tenant import Tenant


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_private_tenant(new_cli):
    result = new_cli.ok("init")
    root = new_cli.root
    assert f"created tenant {root}" in result.output
    assert _mode(root) == 0o700
    assert _mode(root / "master.key") == 0o600
    assert len((root / "master.key").read_bytes()) == 32
    for name in ("tenant.json", "keystore.p12", "credentials.enc", "locations.json"):
        assert (root / name).is_file(), name
        assert _mode(root / name) == 0o600, name
    marker = json.loads((root / "tenant.json").read_text())
    assert marker["master_key"]["source"] == "file"
    key = load_master_key(new_cli.tenant)
    assert marker["master_key"]["check"] == key.check_value()
    assert len(Keystore.open(new_cli.tenant, key)) == 0
    assert len(CredentialStore.open(new_cli.tenant, key)) == 0
    assert new_cli.ok("keystore", "list").output.strip() == "(none)"
    assert new_cli.ok("credentials", "list").output.strip() == "(none)"


def test_init_twice_is_an_error_and_resets_nothing(flowrt):
    before = flowrt.snapshot()
    result = flowrt.fails("init")
    assert "already a flowrt tenant" in result.output
    assert "does not reset" in result.output
    assert flowrt.snapshot() == before


def test_init_refuses_a_non_empty_directory(new_cli):
    new_cli.root.mkdir()
    (new_cli.root / "notes.txt").write_text("mine")
    result = new_cli.fails("init")
    assert "is not empty and is not a flowrt tenant" in result.output
    assert "hint: give `--tenant` a new or empty directory" in result.output
    assert sorted(p.name for p in new_cli.root.iterdir()) == ["notes.txt"]


def test_init_accepts_an_empty_directory_and_tightens_it(new_cli):
    new_cli.root.mkdir(mode=0o755)
    os.chmod(new_cli.root, 0o755)
    new_cli.ok("init")
    assert _mode(new_cli.root) == 0o700


def test_init_with_env_master_key_writes_no_key_file(new_cli):
    key = generate_master_key()
    env = {"FLOWRT_MASTER_KEY": base64.b64encode(key.reveal()).decode()}
    result = new_cli.ok("init", env=env)
    assert "FLOWRT_MASTER_KEY" in result.output
    assert not (new_cli.root / "master.key").exists()
    assert new_cli.ok("keystore", "list", env=env).output.strip() == "(none)"
    # Without the variable, the tenant says which key it needs.
    result = new_cli.fails("keystore", "list")
    assert "is given by FLOWRT_MASTER_KEY, which is not set" in result.output
    # With another key, the check value catches it before any store is opened.
    other = base64.b64encode(generate_master_key().reveal()).decode()
    result = new_cli.fails("credentials", "list", env={"FLOWRT_MASTER_KEY": other})
    assert "is not the master key of the tenant" in result.output


def test_init_with_a_bad_env_key_creates_nothing(new_cli):
    result = new_cli.fails("init", env={"FLOWRT_MASTER_KEY": "c2hvcnQ="})
    assert "decodes to 5 bytes" in result.output
    assert "openssl rand -base64 32" in result.output
    assert not new_cli.root.exists()
    result = new_cli.fails("init", env={"FLOWRT_MASTER_KEY": "not base64 at all!"})
    assert "is not base64" in result.output
    assert "not base64 at all" not in result.output.replace("is not base64", "")


def test_commands_without_a_tenant_say_how_to_create_one(new_cli):
    for args in (
        ("keystore", "list"),
        ("credentials", "list"),
        ("locations", "list"),
        ("keystore", "password"),
    ):
        result = new_cli.fails(*args)
        assert f"no tenant at {new_cli.root}" in result.output
        assert "flowrt --tenant" in result.output and "init" in result.output


def test_env_key_encodings():
    key = generate_master_key()
    raw = key.reveal()
    assert master_key_from_env_value(base64.b64encode(raw).decode()) == key
    assert master_key_from_env_value(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == key
    assert master_key_from_env_value(" " + base64.b64encode(raw).decode() + "\n") == key


def test_master_key_never_shows_in_repr():
    key = MasterKey(b"k" * 32)
    assert "k" * 8 not in repr(key) and "hidden" in repr(key)
    with pytest.raises(CredentialError, match="32 bytes"):
        MasterKey(b"short")


def test_key_file_readable_by_others_is_refused(flowrt):
    path = flowrt.root / "master.key"
    for mode in (0o640, 0o604, 0o660):
        os.chmod(path, mode)
        result = flowrt.fails("credentials", "list")
        assert f"the master key file {path} is accessible to group or others" in result.output
        assert f"mode {mode:04o}" in result.output
        assert f"hint: chmod 600 {path}" in result.output
    os.chmod(path, 0o600)
    flowrt.ok("credentials", "list")
    os.chmod(path, 0o400)
    flowrt.ok("credentials", "list")


def test_missing_or_damaged_key_file(flowrt):
    path = flowrt.root / "master.key"
    key = path.read_bytes()
    path.unlink()
    result = flowrt.fails("keystore", "list")
    assert f"the master key file {path} does not exist" in result.output
    path.write_bytes(key[:20])
    os.chmod(path, 0o600)
    result = flowrt.fails("keystore", "list")
    assert "holds 20 bytes, expected 32" in result.output


def test_replaced_key_file_is_detected(flowrt):
    path = flowrt.root / "master.key"
    path.write_bytes(generate_master_key().reveal())
    result = flowrt.fails("keystore", "list")
    assert f"the master key from {path} is not the master key of the tenant" in result.output


def test_env_key_wins_over_the_file(flowrt):
    tenant = Tenant(flowrt.root)
    file_key = load_master_key(tenant, environ={})
    env = {"FLOWRT_MASTER_KEY": base64.b64encode(file_key.reveal()).decode()}
    os.chmod(flowrt.root / "master.key", 0o644)  # would be refused if the file were read
    assert load_master_key(tenant, environ=env) == file_key
