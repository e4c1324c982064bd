"""IMAP response parsing and the wire forms the client needs: FETCH/LIST/SELECT data,
tagged-reply codes, UID sets, modified UTF-7 folder names.

Pure functions over aioimaplib ``Response`` objects (lines as bytes; literals, such as a
FETCH body, as bytearray; the tagged reply's text last), kept apart from the protocol code
so that they are easy to test on their own.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from aioimaplib.aioimaplib import Response, literal_data_re

__all__ = [
    "FetchedMail",
    "SelectInfo",
    "chunks",
    "decode_folder",
    "encode_folder",
    "parse_fetch",
    "parse_list",
    "parse_uid_set",
    "response_code",
    "response_text",
    "select_info",
    "uid_set",
]

T = TypeVar("T")

FETCH_START = re.compile(rb"\d+ FETCH \(", re.IGNORECASE)
_UID = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)", re.IGNORECASE)
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)", re.IGNORECASE)
_MODSEQ = re.compile(rb"\bMODSEQ \((\d+)\)", re.IGNORECASE)
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]", re.IGNORECASE)
_EXISTS_LINE = re.compile(rb"^(\d+) EXISTS$", re.IGNORECASE)
_CODE = re.compile(rb"^\[([A-Z-]+)", re.IGNORECASE)
_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>NIL|"(?:[^"\\]|\\.)*") ?(?P<name>.*)$')


class SelectInfo:
    __slots__ = ("exists", "folder", "uidnext", "uidvalidity")

    def __init__(self, folder: str, uidvalidity: int, exists: int, uidnext: int | None) -> None:
        self.folder = folder
        self.uidvalidity = uidvalidity
        self.exists = exists
        self.uidnext = uidnext


class FetchedMail:
    __slots__ = ("flags", "raw", "uid")

    def __init__(self, uid: int, raw: bytes, flags: tuple[str, ...]) -> None:
        self.uid = uid
        self.raw = raw
        self.flags = flags


def last_line(response: Response) -> bytes:
    lines = response.lines
    return bytes(lines[-1]) if lines else b""


def response_text(response: Response) -> str:
    """The tagged reply's text (``[AUTHENTICATIONFAILED] Authentication failed.``)."""
    return last_line(response).decode("utf-8", "replace").strip()


def response_code(response: Response) -> str:
    """The response code of the tagged reply (``NONEXISTENT``, ``TRYCREATE``), or ''."""
    match = _CODE.match(last_line(response))
    return match.group(1).decode("ascii").upper() if match else ""


def select_info(folder: str, response: Response) -> SelectInfo:
    uidvalidity = 0
    exists = 0
    uidnext: int | None = None
    for line in response.lines:
        if type(line) is not bytes:
            continue
        if m := _UIDVALIDITY.search(line):
            uidvalidity = int(m.group(1))
        elif m := _UIDNEXT.search(line):
            uidnext = int(m.group(1))
        elif m := _EXISTS_LINE.match(line.strip()):
            exists = int(m.group(1))
    return SelectInfo(folder, uidvalidity, exists, uidnext)


def parse_fetch(response: Response) -> list[dict[str, Any]]:
    """FETCH responses as dicts. A message's response is its ``N FETCH (`` line, its literal
    (the body, a bytearray) and trailing lines; the tagged reply is the last line."""
    items: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    meta = b""
    for line in response.lines[:-1]:
        if type(line) is bytes and FETCH_START.match(line):
            if current is not None:
                _fill(current, meta)
            current, meta = {}, line
            items.append(current)
        elif current is None:
            continue
        elif isinstance(line, bytearray):
            current["body"] = bytes(line)
        else:
            meta += b" " + bytes(line)
    if current is not None:
        _fill(current, meta)
    return items


def _fill(item: dict[str, Any], meta: bytes) -> None:
    if m := _UID.search(meta):
        item["uid"] = int(m.group(1))
    if m := _SIZE.search(meta):
        item["size"] = int(m.group(1))
    if m := _FLAGS.search(meta):
        item["flags"] = tuple(m.group(1).decode("ascii", "replace").split())
    if m := _MODSEQ.search(meta):
        item["modseq"] = int(m.group(1))


def parse_uid_set(text: str) -> set[int]:
    """``7,9:11`` -> {7, 9, 10, 11} (a set a server names, e.g. in ``[MODIFIED ...]``)."""
    uids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and (not high or high.isdigit()):
            uids.update(range(int(low), int(high or low) + 1))
    return uids


def parse_list(response: Response) -> list[tuple[str, tuple[str, ...]]]:
    folders: list[tuple[str, tuple[str, ...]]] = []
    lines = response.lines[:-1]
    for index, line in enumerate(lines):
        if type(line) is not bytes:
            continue
        match = _LIST_LINE.match(line.strip())
        if match is None:
            continue
        raw = match.group("name").strip()
        literal = literal_data_re.match(raw)
        if literal and index + 1 < len(lines):
            raw = bytes(lines[index + 1])
        name = _unquote(raw)
        flags = tuple(match.group("flags").decode("ascii", "replace").split())
        folders.append((decode_folder(name), flags))
    return folders


def _unquote(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def uid_set(uids: Iterable[int]) -> str:
    """``1:5,7,9:12`` from UIDs in any order: short command lines for big batches."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev > start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev > start else str(start))
    return ",".join(parts)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ----------------------------------------------------------------------------- folder names


def encode_folder(name: str) -> str:
    """RFC 3501 modified UTF-7, the wire form of folder names (``Entwürfe`` -> ``Entw&APw-rfe``)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            text = base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{text}-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_folder(text: str) -> str:
    def decode(match: re.Match[str]) -> str:
        body = match.group(1)
        if not body:
            return "&"
        data = body.replace(",", "/")
        try:
            return base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError):
            return match.group(0)

    return re.sub(r"&([A-Za-z0-9+,]*)-", decode, text)
