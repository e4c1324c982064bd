"""Just enough DER to take a PKCS#12 file apart and put pieces of it together again.

cryptography builds and encrypts every bag; this module only walks and writes the outer
SEQUENCE / OCTET STRING / [0] layers around them (see ``_pkcs12``). Definite lengths only:
flowrt writes DER, and anything else is refused rather than guessed at.
"""

from __future__ import annotations

import dataclasses

SEQUENCE = 0x30
SET = 0x31
OCTET_STRING = 0x04
INTEGER = 0x02
OID = 0x06
NULL = 0x05
CONTEXT_0 = 0xA0  # [0] EXPLICIT, constructed


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


@dataclasses.dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes
    raw: bytes  # tag, length and value, exactly as they were in the input


def read_one(data: bytes, pos: int = 0) -> tuple[Tlv, int]:
    """The TLV starting at ``pos`` and the position right after it."""
    if pos + 2 > len(data):
        raise DerError("truncated DER header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tags are not used in PKCS#12")
    first = data[pos + 1]
    cursor = pos + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length (BER) where DER was expected")
    else:
        count = first & 0x7F
        if count > 4 or cursor + count > len(data):
            raise DerError("bad DER length")
        length = int.from_bytes(data[cursor : cursor + count], "big")
        cursor += count
    end = cursor + length
    if end > len(data):
        raise DerError("truncated DER value")
    return Tlv(tag, data[cursor:end], data[pos:end]), end


def read_single(data: bytes, tag: int) -> Tlv:
    """``data`` must be exactly one TLV with ``tag``."""
    tlv, end = read_one(data)
    if end != len(data):
        raise DerError("trailing bytes after DER value")
    expect(tlv, tag)
    return tlv


def children(value: bytes) -> list[Tlv]:
    """The TLVs inside a constructed value, in order."""
    items: list[Tlv] = []
    pos = 0
    while pos < len(value):
        tlv, pos = read_one(value, pos)
        items.append(tlv)
    return items


def expect(tlv: Tlv, tag: int) -> Tlv:
    if tlv.tag != tag:
        raise DerError(f"expected DER tag 0x{tag:02x}, found 0x{tlv.tag:02x}")
    return tlv


def encode(tag: int, value: bytes) -> bytes:
    length = len(value)
    if length < 0x80:
        header = bytes([tag, length])
    else:
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([tag, 0x80 | len(size)]) + size
    return header + value


def encode_int(value: int) -> bytes:
    """A non-negative INTEGER."""
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return encode(INTEGER, body)


def decode_int(tlv: Tlv) -> int:
    expect(tlv, INTEGER)
    if not tlv.value:
        raise DerError("empty INTEGER")
    return int.from_bytes(tlv.value, "big", signed=True)


def encode_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray()
    for n in [parts[0] * 40 + parts[1], *parts[2:]]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        body.extend(reversed(chunk))
    return encode(OID, bytes(body))
