"""The connector's TOML: what loads, and errors that name the file and the key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import flowrt.connector
from flowrt.cli.main import cli
from flowrt.connector import load_config
from flowrt.connector.config import DEFAULT_IDLE_TIMEOUT, hash_token
from flowrt.errors import ConnectorError
from tests.connector.connector_support import (
    LOCATION,
    TOKEN,
    TOKEN_ENV,
    WriteConfig,
    tcp,
    tcp_tls,
    toml_text,
)
from tests.servers.ca import TestCA

EXAMPLE = Path(flowrt.connector.__file__).with_name("example.toml")
MAPPING = tcp("mail.plant.example:143", "127.0.0.1:10143")
ENV = {TOKEN_ENV: TOKEN}


def test_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "connector.toml"
    path.write_text(EXAMPLE.read_text())
    TestCA().write_cert(tmp_path / "mail-ca.pem")
    config = load_config(path, environ=ENV)
    assert config.location_id == "plant-1"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 1080)
    assert [m.describe() for m in config.mappings] == [
        "mail.plant.example:143 -> 10.0.0.5:143 (tcp)",
        "mail.plant.example:993 -> 10.0.0.5:993 (tcp-tls)",
        "smtp.plant.example:25 -> 10.0.0.6:25 (tcp)",
    ]
    assert config.mappings[1].server_hostname == "mail.plant.example"
    assert config.idle_timeout == 300 and config.max_connections == 100
    assert config.tls_context is not None
    assert config.token.matches(TOKEN.encode()) and not config.token.matches(b"x" * 20)


def test_defaults_and_durations(write_config: WriteConfig) -> None:
    path = write_config([MAPPING], listen=None, connect_timeout="1m30s", handshake_timeout=2.5)
    config = load_config(path, environ=ENV)
    assert config.listen == "127.0.0.1:1080"
    assert config.idle_timeout == DEFAULT_IDLE_TIMEOUT
    assert config.connect_timeout == 90 and config.handshake_timeout == 2.5
    assert config.tls_context is None
    assert config.find("mail.plant.example", 143) is config.mappings[0]
    assert config.find("mail.plant.example", 993) is None


def test_ipv6_listen_and_mappings(write_config: WriteConfig) -> None:
    path = write_config(
        [tcp("[FD00::1]:143", "[::1]:10143"), tcp("Mail.Plant.Example.:25", "localhost:25")],
        listen="[::]:1080",
    )
    config = load_config(path, environ=ENV)
    assert (config.listen_host, config.listen_port) == ("::", 1080)
    assert config.listen == "[::]:1080"
    assert config.mappings[0].virtual == "[fd00::1]:143"
    assert config.mappings[0].internal == "[::1]:10143"
    assert config.mappings[1].virtual == "mail.plant.example:25"


def test_token_from_a_0600_file(write_config: WriteConfig, tmp_path: Path) -> None:
    token_file = tmp_path / "connector.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = load_config(
        write_config([MAPPING], token_env=None, token_file="connector.token"), environ={}
    )
    assert config.token.matches(TOKEN.encode())
    assert config.token.source == f"file {token_file}"
    token_file.chmod(0o644)
    with pytest.raises(ConnectorError) as caught:
        load_config(write_config([MAPPING], token_env=None, token_file=str(token_file)))
    assert "token_file: the token file" in str(caught.value)
    assert "can be read by others (mode 0644)" in str(caught.value)
    assert caught.value.hint == f"chmod 600 {token_file}"


def test_token_as_a_sha256(write_config: WriteConfig) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    assert hash_token(TOKEN) == digest
    config = load_config(write_config([MAPPING], token_env=None, token_sha256=digest), environ={})
    assert config.token.matches(TOKEN.encode())
    assert not config.token.matches(TOKEN.encode() + b"x")


def problem(write_config: WriteConfig, mappings: list[dict[str, Any]], **top: Any) -> str:
    path = write_config(mappings, name="bad.toml", **top)
    with pytest.raises(ConnectorError) as caught:
        load_config(path, environ=ENV)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert TOKEN not in message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    "top, expected",
    [
        ({"location_id": None}, "location_id: missing"),
        ({"location_id": "plant 1"}, "location_id: 'plant 1' is not a location ID"),
        ({"location_id": 7}, "location_id: expected a non-empty string, not 7"),
        ({"listen": "127.0.0.1"}, "listen: '127.0.0.1' has no port"),
        ({"listen": "127.0.0.1:99999"}, "listen: '127.0.0.1:99999' is not HOST:PORT"),
        ({"listen": "bad host:1080"}, "listen: 'bad host:1080' is not HOST:PORT"),
        ({"token_env": None}, "token_env: no access token source is configured"),
        ({"token_file": "t"}, "token_file: give only one of token_env, token_file"),
        ({"token_env": "NOT_SET_ANYWHERE"}, "token_env: the environment variable NOT_SET_"),
        ({"token_env": None, "token_sha256": "abc"}, "token_sha256: expected 64 hexadecimal"),
        ({"idle_timeout": "5 minutes"}, "idle_timeout: '5 minutes' is not a positive duration"),
        ({"idle_timeout": 0}, "idle_timeout: 0 is not a positive duration"),
        ({"max_connections": 0}, "max_connections: expected a whole number of at least 1"),
        ({"max_conections": 5}, "max_conections: unknown key"),
    ],
)
def test_top_level_errors(write_config: WriteConfig, top: dict[str, Any], expected: str) -> None:
    assert problem(write_config, [MAPPING], **top).startswith(expected)


@pytest.mark.parametrize(
    "mapping, expected",
    [
        ({"virtual": "mail:143"}, "mapping[1].internal: missing"),
        ({**MAPPING, "internal": "10.0.0.5"}, "mapping[1].internal: '10.0.0.5' has no port"),
        ({**MAPPING, "virtual": "mail..x:1"}, "mapping[1].virtual: 'mail..x' is not a host"),
        ({**MAPPING, "protocol": "tls"}, "mapping[1].protocol: 'tls' is not a protocol"),
        ({**MAPPING, "tls_name": "mail"}, "mapping[1].tls_name: only a tcp-tls mapping"),
        ({**MAPPING, "port": 143}, "mapping[1].port: unknown key"),
    ],
)
def test_mapping_errors(write_config: WriteConfig, mapping: dict[str, Any], expected: str) -> None:
    assert problem(write_config, [mapping]).startswith(expected)


def test_duplicate_and_missing_mappings(write_config: WriteConfig) -> None:
    twice = tcp("MAIL.plant.example:143", "127.0.0.1:1")
    assert problem(write_config, [MAPPING, twice]) == (
        "mapping[2].virtual: mail.plant.example:143 is mapped twice (also in mapping[1])"
    )
    assert problem(write_config, []).startswith("mapping: no mapping")


def test_truststore_errors(write_config: WriteConfig, tmp_path: Path) -> None:
    tls = tcp_tls("mail.plant.example:993", "10.0.0.5:993")
    assert problem(write_config, [tls]).startswith("tls.truststore: missing, but")
    missing = tmp_path / "nope.pem"
    assert problem(write_config, [tls], truststore=missing) == (
        f"tls.truststore: {missing} does not exist"
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert problem(write_config, [tls], truststore=junk).startswith(
        f"tls.truststore: {junk} holds no PEM certificate"
    )


def test_token_rules(write_config: WriteConfig) -> None:
    path = write_config([MAPPING], name="rules.toml")
    for bad, expected in (("short", "16 to 255 bytes long, not 5"), ("a" * 20 + " b", "ASCII")):
        with pytest.raises(ConnectorError) as caught:
            load_config(path, environ={TOKEN_ENV: bad})
        assert expected in str(caught.value)
        assert bad not in str(caught.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('location_id = "plant-1"\n[[mapping]\n')
    with pytest.raises(ConnectorError, match=rf"^{path}: not valid TOML: .*line 2"):
        load_config(path, environ=ENV)
    with pytest.raises(ConnectorError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ=ENV)


# -- CLI ----------------------------------------------------------------------------------


def test_cli_config_error_is_a_message_not_a_traceback(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    path = write_config([{**MAPPING, "protocol": "udp"}])
    for command in ("check", "run"):
        result = CliRunner().invoke(cli, ["connector", command, str(path)])
        assert result.exit_code == 1
        assert result.output.startswith(f"error: {path}: mapping[1].protocol: 'udp'")
        assert "hint: tcp passes bytes through" in result.output
        assert "Traceback" not in result.output


def test_cli_new_token_and_hash_token(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["connector", "new-token"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) == 43
    assert f'token_sha256 = "{hash_token(token)}"' in result.stderr

    token_file = tmp_path / "plant.token"
    result = runner.invoke(cli, ["connector", "new-token", "--file", str(token_file)])
    assert result.exit_code == 0, result.output
    assert os.stat(token_file).st_mode & 0o777 == 0o600
    written = token_file.read_text().strip()
    assert written not in result.output
    assert f'token_sha256 = "{hash_token(written)}"' in result.stderr
    again = runner.invoke(cli, ["connector", "new-token", "--file", str(token_file)])
    assert again.exit_code == 2 and "exists" in again.output

    hashed = runner.invoke(cli, ["connector", "hash-token"], input=TOKEN + "\n")
    assert hashed.exit_code == 0
    assert hashed.stdout == f'token_sha256 = "{hash_token(TOKEN)}"\n'
    short = runner.invoke(cli, ["connector", "hash-token"], input="abc\n")
    assert short.exit_code == 2 and "16 to 255 bytes" in short.output


def test_generated_toml_round_trips(tmp_path: Path) -> None:
    # The tests' TOML writer produces what the loader reads (guards the helper itself).
    path = tmp_path / "c.toml"
    path.write_text(toml_text({"location_id": LOCATION, "token_env": TOKEN_ENV}, [MAPPING]))
    assert load_config(path, environ=ENV).mappings[0].internal == "127.0.0.1:10143"
