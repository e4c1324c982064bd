"""The tenant's on-premise locations: location ID -> SOCKS5 connector address (+ credential).

A flow says ``proxy on-premise location "plant-1"``; the runtime looks the ID up here to find
the connector to go through and, optionally, the credential it authenticates with. Kept as a
small JSON file (``locations.json``) that holds no secret, only credential names; a missing
file is an empty map. Every change rewrites the file atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowrt._fs import atomic_write
from flowrt._hosts import is_host
from flowrt.errors import ConnectorError, UsageError
from flowrt.security._lock import security_lock
from flowrt.tenant import Tenant

ID_MAX = 100
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Location:
    id: str
    proxy_host: str
    proxy_port: int
    credential: str | None = None

    @property
    def proxy(self) -> str:
        host = f"[{self.proxy_host}]" if ":" in self.proxy_host else self.proxy_host
        return f"{host}:{self.proxy_port}"


_RESTORE_HINT = (
    "restore {path} from a backup, or move it away and register the locations again with "
    "`flowrt locations add ID --proxy HOST:PORT --credential NAME` (it holds no secret)"
)


def validate_location_id(location_id: str) -> str:
    if not 1 <= len(location_id) <= ID_MAX or not _ID.fullmatch(location_id):
        raise UsageError(
            f"the location ID {location_id!r} is not valid",
            hint=f"use 1 to {ID_MAX} letters, digits and . _ -, starting with a letter or a digit",
        )
    return location_id


def parse_proxy(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` to (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text.strip())
    hint = "write it as HOST:PORT, e.g. connector.internal:1080 or [::1]:1080"
    if not match:
        raise UsageError(f"the proxy address {text!r} is not HOST:PORT", hint=hint)
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise UsageError(f"the proxy port {port} is not between 1 and 65535", hint=hint)
    if not is_host(host):
        raise UsageError(f"the proxy host {host!r} is not a host name or IP address", hint=hint)
    return host, port


class Locations:
    """The location map of one tenant; edits are saved by :meth:`save`."""

    def __init__(self, path: Path, locations: list[Location]) -> None:
        self.path = path
        self._locations = {loc.id: loc for loc in locations}

    @classmethod
    def open(cls, tenant: Tenant) -> Locations:
        return cls.load(tenant.locations_path)

    @classmethod
    def load(cls, path: Path) -> Locations:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path, [])
        except OSError as exc:
            raise ConnectorError(f"cannot read the locations file {path}: {exc.strerror}") from exc
        try:
            document = json.loads(data.decode("utf-8"))
            locations = [_from_json(item) for item in document["locations"]]
        except UnicodeDecodeError as exc:
            raise ConnectorError(
                f"the locations file {path} is damaged: byte {exc.start} is not UTF-8 text",
                hint=_RESTORE_HINT.format(path=path),
            ) from None  # the message says where; no library name in the output
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConnectorError(
                f"the locations file {path} is not valid ({exc})",
                hint=_RESTORE_HINT.format(path=path),
            ) from exc
        return cls(path, locations)

    def get(self, location_id: str) -> Location:
        try:
            return self._locations[location_id]
        except KeyError:
            raise ConnectorError(
                f"no on-premise location with ID '{location_id}'",
                hint=f"add it with `flowrt locations add {location_id} --proxy HOST:PORT`",
            ) from None

    def __iter__(self) -> Iterator[Location]:
        return iter(sorted(self._locations.values(), key=lambda loc: loc.id))

    def __len__(self) -> int:
        return len(self._locations)

    def __contains__(self, location_id: object) -> bool:
        return location_id in self._locations

    def add(self, location: Location, *, replace: bool = False) -> None:
        validate_location_id(location.id)
        if location.id in self._locations and not replace:
            raise ConnectorError(
                f"the location '{location.id}' already exists",
                hint="use --replace to change it",
            )
        self._locations[location.id] = location

    def delete(self, location_id: str) -> Location:
        location = self.get(location_id)
        del self._locations[location_id]
        return location

    def to_bytes(self) -> bytes:
        document = {
            "version": FORMAT_VERSION,
            "locations": [dataclasses.asdict(loc) for loc in self],
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")

    def save(self) -> None:
        atomic_write(self.path, self.to_bytes())


def _from_json(item: dict[str, Any]) -> Location:
    credential = item.get("credential")
    return Location(
        id=str(item["id"]),
        proxy_host=str(item["proxy_host"]),
        proxy_port=int(item["proxy_port"]),
        credential=None if credential is None else str(credential),
    )


@contextlib.contextmanager
def edit_locations(tenant: Tenant) -> Iterator[Locations]:
    """Lock, load, let the body change the map, save; an exception changes nothing."""
    with security_lock(tenant):
        locations = Locations.open(tenant)
        yield locations
        locations.save()
