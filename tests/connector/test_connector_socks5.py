"""The SOCKS5 wire format, without any I/O: whole, partial, pipelined and malformed messages."""

from __future__ import annotations

import random

import pytest

from flowrt.connector.socks5 import (
    AddressType,
    Command,
    Credentials,
    Greeting,
    Reply,
    Request,
    Socks5ProtocolError,
    auth_reply,
    method_reply,
    normalize_host,
    parse_auth,
    parse_greeting,
    parse_request,
    reply,
)


def every_prefix_is_incomplete(parse: object, message: bytes) -> None:
    for end in range(len(message)):
        assert parse(message[:end]) is None, (message, end)  # type: ignore[operator]


# -- greeting -----------------------------------------------------------------------------


def test_greeting() -> None:
    message = bytes([5, 2, 0, 2])
    assert parse_greeting(message) == (Greeting(frozenset({0, 2})), 4)
    assert parse_greeting(message + b"more") == (Greeting(frozenset({0, 2})), 4)
    every_prefix_is_incomplete(parse_greeting, message)


def test_greeting_without_methods_is_answered_no_acceptable_method() -> None:
    with pytest.raises(Socks5ProtocolError) as caught:
        parse_greeting(bytes([5, 0]))
    assert caught.value.reply == bytes([5, 0xFF])


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", bytes([4, 1, 0, 80]), b"\x16\x03\x01"])
def test_greeting_of_another_protocol_gets_no_reply(data: bytes) -> None:
    with pytest.raises(Socks5ProtocolError, match="not a SOCKS5 greeting") as caught:
        parse_greeting(data)
    assert caught.value.reply is None


# -- RFC 1929 -----------------------------------------------------------------------------


def test_auth() -> None:
    message = bytes([1, 7]) + b"plant-1" + bytes([5]) + b"s3cr3"
    creds, used = parse_auth(message) or (None, 0)
    assert creds == Credentials("plant-1", b"s3cr3") and used == len(message)
    assert "s3cr3" not in repr(creds)
    every_prefix_is_incomplete(parse_auth, message)


def test_auth_lengths_up_to_255() -> None:
    message = bytes([1, 255]) + b"u" * 255 + bytes([255]) + b"p" * 255
    parsed = parse_auth(message)
    assert parsed is not None and parsed[1] == 513
    assert parsed[0].username == "u" * 255 and parsed[0].password == b"p" * 255


@pytest.mark.parametrize(
    "data",
    [
        bytes([5, 1, 0]),  # a second greeting instead of the credentials
        bytes([1, 0, 3]) + b"abc",  # empty user
        bytes([1, 3]) + b"abc" + bytes([0]),  # empty password
    ],
)
def test_bad_auth_message_is_answered_failure(data: bytes) -> None:
    with pytest.raises(Socks5ProtocolError) as caught:
        parse_auth(data)
    assert caught.value.reply == bytes([1, 1])


def test_non_utf8_username_is_kept_readable() -> None:
    creds, _ = parse_auth(bytes([1, 2, 0xFF, 0x41, 1, 0x42])) or (None, 0)
    assert creds is not None and creds.username == "\\xffA"


# -- request ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            bytes([5, 1, 0, 1, 10, 0, 0, 5, 0, 143]),
            Request(Command.CONNECT, AddressType.IPV4, "10.0.0.5", 143),
        ),
        (
            bytes([5, 1, 0, 4]) + bytes(15) + bytes([1]) + (993).to_bytes(2, "big"),
            Request(Command.CONNECT, AddressType.IPV6, "::1", 993),
        ),
        (
            bytes([5, 1, 0, 3, 19]) + b"Mail.Plant.Example." + (25).to_bytes(2, "big"),
            Request(Command.CONNECT, AddressType.DOMAIN, "mail.plant.example", 25),
        ),
        (
            bytes([5, 1, 0, 3, 9]) + b"127.0.0.1" + (25).to_bytes(2, "big"),
            Request(Command.CONNECT, AddressType.DOMAIN, "127.0.0.1", 25),
        ),
        (
            bytes([5, 2, 0, 1, 0, 0, 0, 0, 0, 0]),
            Request(Command.BIND, AddressType.IPV4, "0.0.0.0", 0),
        ),
        (
            bytes([5, 0x42, 7, 1, 1, 2, 3, 4, 255, 255]),  # unknown command, RSV ignored
            Request(0x42, AddressType.IPV4, "1.2.3.4", 65535),
        ),
    ],
)
def test_request(message: bytes, expected: Request) -> None:
    assert parse_request(message) == (expected, len(message))
    assert parse_request(message + b"early data") == (expected, len(message))
    every_prefix_is_incomplete(parse_request, message)


@pytest.mark.parametrize(
    "data, code",
    [
        (bytes([5, 1, 0, 2, 0, 0]), Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (bytes([5, 1, 0, 3, 0, 0, 25]), Reply.GENERAL_FAILURE),
        (bytes([4, 1, 0, 1, 1, 2, 3, 4, 0, 25]), Reply.GENERAL_FAILURE),
    ],
)
def test_bad_request_is_answered(data: bytes, code: Reply) -> None:
    with pytest.raises(Socks5ProtocolError) as caught:
        parse_request(data)
    assert caught.value.reply == reply(code)


def test_pipelined_handshake_parses_message_by_message() -> None:
    buf = bytearray(
        bytes([5, 1, 2])
        + bytes([1, 7])
        + b"plant-1"
        + bytes([5])
        + b"s3cr3"
        + bytes([5, 1, 0, 3, 4])
        + b"mail"
        + bytes([0, 143])
        + b"a1 LOGIN"
    )
    for parse in (parse_greeting, parse_auth, parse_request):
        parsed = parse(buf)
        assert parsed is not None
        del buf[: parsed[1]]
    assert bytes(buf) == b"a1 LOGIN"


def test_random_bytes_only_ever_raise_the_protocol_error() -> None:
    rng = random.Random(1928)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        if data and rng.random() < 0.7:
            data = bytes([rng.choice([1, 5])]) + data[1:]
        for parse in (parse_greeting, parse_auth, parse_request):
            try:
                result = parse(data)
            except Socks5ProtocolError:
                continue
            assert result is None or 0 < result[1] <= len(data)


# -- replies ------------------------------------------------------------------------------


def test_replies() -> None:
    assert method_reply(2) == b"\x05\x02"
    assert auth_reply(True) == b"\x01\x00" and auth_reply(False) == b"\x01\x01"
    assert reply(Reply.NOT_ALLOWED) == bytes([5, 2, 0, 1, 0, 0, 0, 0, 0, 0])


def test_reply_texts_are_the_standard_ones() -> None:
    assert Reply.NOT_ALLOWED.text == "Connection not allowed by ruleset"
    assert Reply.HOST_UNREACHABLE.text == "Host unreachable"
    assert Reply.NETWORK_UNREACHABLE.text == "Network unreachable"
    assert Reply.CONNECTION_REFUSED.text == "Connection refused"
    assert Reply.GENERAL_FAILURE.text == "General SOCKS server failure"
    assert Reply.COMMAND_NOT_SUPPORTED.text == "Command not supported"


@pytest.mark.parametrize(
    "host, normalized",
    [
        ("Mail.Plant.Example.", "mail.plant.example"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("FD00::5", "fd00::5"),
        ("10.0.0.5", "10.0.0.5"),
    ],
)
def test_normalize_host(host: str, normalized: str) -> None:
    assert normalize_host(host) == normalized
