"""`flowrt locations ...`: location ID -> SOCKS5 connector address and credential."""

from __future__ import annotations

import json

import pytest

from flowrt.errors import ConnectorError, UsageError
from flowrt.security.locations import Location, Locations, parse_proxy


def test_add_list_delete(flowrt):
    flowrt.ok("credentials", "add", "conn", "--user", "plant", "--password-stdin", input="pw")
    result = flowrt.ok(
        "locations", "add", "plant-1", "--proxy", "connector.internal:1080", "--credential", "conn"
    )
    assert "added location plant-1 -> connector.internal:1080 with credential conn" in result.output
    flowrt.ok("locations", "add", "lab", "--proxy", "[::1]:1081")
    flowrt.ok("locations", "add", "ip", "--proxy", "10.0.0.7:1080")
    text = flowrt.ok("locations", "list").output
    assert text.splitlines()[0].split() == ["ID", "PROXY", "CREDENTIAL"]
    rows = json.loads(flowrt.ok("locations", "list", "--format", "json").stdout)
    assert rows == [
        {"id": "ip", "proxy": "10.0.0.7:1080", "credential": None},
        {"id": "lab", "proxy": "[::1]:1081", "credential": None},
        {"id": "plant-1", "proxy": "connector.internal:1080", "credential": "conn"},
    ]
    location = Locations.open(flowrt.tenant).get("lab")
    assert (location.proxy_host, location.proxy_port) == ("::1", 1081)
    assert "deleted location ip" in flowrt.ok("locations", "delete", "ip").output
    assert "ip" not in Locations.open(flowrt.tenant)


def test_replace_and_duplicates(flowrt):
    flowrt.ok("locations", "add", "p", "--proxy", "a:1")
    before = flowrt.snapshot()
    result = flowrt.fails("locations", "add", "p", "--proxy", "b:2")
    assert "the location 'p' already exists" in result.output and "--replace" in result.output
    assert flowrt.snapshot() == before
    flowrt.ok("locations", "add", "p", "--proxy", "b:2", "--replace")
    assert Locations.open(flowrt.tenant).get("p").proxy == "b:2"


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (("x", "--proxy", "nohost"), "is not HOST:PORT", 2),
        (("x", "--proxy", "h:0"), "not between 1 and 65535", 2),
        (("x", "--proxy", "h:70000"), "not between 1 and 65535", 2),
        (("x", "--proxy", "bad host!:1080"), "is not a host name or IP address", 2),
        (("bad id", "--proxy", "h:1"), "the location ID 'bad id' is not valid", 2),
        (("x", "--proxy", "h:1", "--credential", "ghost"), "no credential named 'ghost'", 1),
    ],
)
def test_bad_input_changes_nothing(flowrt, args, message, code):
    before = flowrt.snapshot()
    result = flowrt.fails("locations", "add", *args, code=code)
    assert message in result.output
    assert flowrt.snapshot() == before


def test_credential_kind_must_suit_a_connector(flowrt):
    flowrt.ok(
        "credentials",
        "add",
        "o",
        "--kind",
        "oauth2-client-credentials",
        "--token-url",
        "https://idp/token",
        "--client-id",
        "c",
        "--password-stdin",
        input="s",
    )
    result = flowrt.fails("locations", "add", "x", "--proxy", "h:1", "--credential", "o")
    assert "is of kind oauth2-client-credentials" in result.output
    flowrt.ok(
        "credentials", "add", "t", "--kind", "secure-parameter", "--password-stdin", input="s"
    )
    flowrt.ok("locations", "add", "x", "--proxy", "h:1", "--credential", "t")


def test_credential_in_use_cannot_be_deleted(flowrt):
    flowrt.ok("credentials", "add", "conn", "--user", "u", "--password-stdin", input="pw")
    flowrt.ok("locations", "add", "plant-1", "--proxy", "h:1080", "--credential", "conn")
    before = flowrt.snapshot()
    result = flowrt.fails("credentials", "delete", "conn")
    assert "is used by the location(s) plant-1" in result.output
    assert flowrt.snapshot() == before
    flowrt.ok("locations", "delete", "plant-1")
    flowrt.ok("credentials", "delete", "conn")


def test_unknown_location(flowrt):
    result = flowrt.fails("locations", "delete", "ghost")
    assert "no on-premise location with ID 'ghost'" in result.output
    assert "flowrt locations add ghost" in result.output
    with pytest.raises(ConnectorError):
        Locations.open(flowrt.tenant).get("ghost")


def test_missing_file_is_an_empty_map_and_a_corrupt_one_an_error(flowrt):
    path = flowrt.root / "locations.json"
    path.unlink()
    assert flowrt.ok("locations", "list").output.strip() == "(none)"
    path.write_text("{not json")
    result = flowrt.fails("locations", "list")
    assert f"the locations file {path} is not valid" in result.output


def test_parse_proxy():
    assert parse_proxy("connector:1080") == ("connector", 1080)
    assert parse_proxy("[2001:db8::1]:1080") == ("2001:db8::1", 1080)
    assert Location("x", "2001:db8::1", 1080).proxy == "[2001:db8::1]:1080"
    with pytest.raises(UsageError):
        parse_proxy("2001:db8::1:1080")
