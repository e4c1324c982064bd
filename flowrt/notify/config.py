"""The tenant's notification settings (``<tenant>/notify.json``): the one mail server alerts go
through, the alert rules and the per-recipient limit.

Everything is checked before it is stored, and stored with one atomic write under a lock, so
bad input leaves the file as it was. The file holds no secret: the server names a credential
of the tenant credential store, never a password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flowrt._fs import atomic_write
from flowrt.errors import TenantError, UsageError
from flowrt.tenant import Tenant

__all__ = [
    "ALLOWED_PROTECTIONS",
    "DEFAULT_LIMIT",
    "DURATION_RANGES",
    "REFUSED_PROTECTIONS",
    "TRIGGERS",
    "WINDOW",
    "NotifyConfig",
    "NotifyServer",
    "Rule",
    "check_address",
    "config_path",
    "edit_config",
    "load_config",
    "make_rule",
    "replace",
    "show_duration",
]

DEFAULT_LIMIT = 3
"""Mails per recipient per 24 hours, as the platform in the reference documents allows."""
WINDOW = 24 * 3600.0

ALLOWED_PROTECTIONS = ("smtps", "starttls-mandatory")
REFUSED_PROTECTIONS = ("off", "starttls-optional")

# What a rule reacts to, and what its duration D means for it.
TRIGGERS: dict[str, str] = {
    "message-failed": "a message ended FAILED or ESCALATED",
    "dead-letter": "a message was dead-lettered",
    "flow-error": "a flow has been in ERROR for longer than --for D",
    "poller-failing": "a flow's poller has been failing for longer than --for D",
    "keystore-expiry": "a keystore entry expires within --within D",
    "lock-stuck": "a mailbox lock has not been renewed for longer than --for D",
}
MESSAGE_TRIGGERS = ("message-failed", "dead-letter")
# Allowed range of D in seconds, per trigger that takes one.
DURATION_RANGES: dict[str, tuple[float, float]] = {
    "flow-error": (60.0, 7 * 86400.0),
    "poller-failing": (60.0, 7 * 86400.0),
    "lock-stuck": (60.0, 7 * 86400.0),
    "keystore-expiry": (86400.0, 365 * 86400.0),
}
_DURATION_OPTION = {"keystore-expiry": "--within"}

_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}"
_ADDRESS = re.compile(rf"{_LOCAL}@{_DOMAIN}")
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_address(value: str, what: str) -> str:
    """A bare mail address (no display name, no angle brackets), or a UsageError."""
    address = value.strip()
    if not _ADDRESS.fullmatch(address):
        raise UsageError(
            f"{what}: {value!r} is not a mail address",
            hint="give a bare address such as ops@example.com (no name, no angle brackets)",
        )
    return address


def duration_option(trigger: str) -> str:
    return _DURATION_OPTION.get(trigger, "--for")


@dataclasses.dataclass(frozen=True)
class NotifyServer:
    """The tenant's notification mail server. ``credential`` names a user credential."""

    host: str
    port: int
    protection: str
    sender: str
    auth: str = "none"  # none | plain | encrypted
    credential: str | None = None
    timeout: float = 30.0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "host": self.host,
            "port": self.port,
            "protection": self.protection,
            "auth": self.auth,
            "credential": self.credential,
            "from": self.sender,
            "timeout": self.timeout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NotifyServer:
        return cls(
            host=str(data["host"]),
            port=int(data["port"]),
            protection=str(data["protection"]),
            sender=str(data["from"]),
            auth=str(data.get("auth", "none")),
            credential=data.get("credential"),
            timeout=float(data.get("timeout", 30.0)),
        )


@dataclasses.dataclass(frozen=True)
class Rule:
    """One alert rule: what triggers it, for which flow (``*``: all), who gets the mail."""

    name: str
    trigger: str
    recipients: tuple[str, ...]
    flow: str = "*"
    duration: float | None = None  # seconds: D of --for / --within
    include_content: bool = False

    def matches_flow(self, flow: str) -> bool:
        return self.flow == "*" or self.flow == flow

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trigger": self.trigger,
            "flow": self.flow,
            "duration_seconds": self.duration,
            "to": list(self.recipients),
            "include_content": self.include_content,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        duration = data.get("duration_seconds")
        return cls(
            name=str(data["name"]),
            trigger=str(data["trigger"]),
            recipients=tuple(str(a) for a in data["to"]),
            flow=str(data.get("flow", "*")),
            duration=None if duration is None else float(duration),
            include_content=bool(data.get("include_content", False)),
        )


def make_rule(
    name: str,
    trigger: str,
    recipients: Sequence[str],
    *,
    flow: str | None = None,
    duration: float | None = None,
    include_content: bool = False,
    known_flows: Sequence[str] = (),
) -> Rule:
    """A checked rule; every problem is a UsageError naming the option."""
    if not _RULE_NAME.fullmatch(name):
        raise UsageError(
            f"rule name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)",
        )
    if trigger not in TRIGGERS:
        raise UsageError(
            f"--on {trigger!r}: unknown trigger",
            hint="one of " + ", ".join(TRIGGERS),
        )
    addresses = [check_address(a, "--to") for a in recipients if a.strip()]
    if not addresses:
        raise UsageError("--to: give at least one recipient address")
    option = duration_option(trigger)
    if trigger in DURATION_RANGES:
        low, high = DURATION_RANGES[trigger]
        if duration is None:
            raise UsageError(f"trigger {trigger} needs {option} DURATION ({TRIGGERS[trigger]})")
        if not low <= duration <= high:
            raise UsageError(
                f"{option} {show_duration(duration)}: out of range for {trigger}; "
                f"allowed {show_duration(low)} to {show_duration(high)}",
            )
    elif duration is not None:
        raise UsageError(f"trigger {trigger} takes no duration ({TRIGGERS[trigger]})")
    if flow is not None and flow != "*":
        if trigger in ("keystore-expiry", "lock-stuck"):
            raise UsageError(f"trigger {trigger} concerns the tenant, not one flow: drop --flow")
        if flow not in known_flows:
            raise UsageError(
                f"--flow {flow!r}: no such flow is deployed",
                hint="deployed flows: "
                + (", ".join(known_flows) or "none")
                + " (`flowrt status`); leave out --flow for all flows",
            )
    return Rule(
        name=name,
        trigger=trigger,
        recipients=tuple(dict.fromkeys(addresses)),
        flow=flow or "*",
        duration=duration,
        include_content=include_content,
    )


def show_duration(seconds: float) -> str:
    """``30m``, ``2h``, ``30d``: a duration as the options take it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclasses.dataclass(frozen=True)
class NotifyConfig:
    server: NotifyServer | None = None
    rules: tuple[Rule, ...] = ()
    limit: int = DEFAULT_LIMIT

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def to_json(self) -> bytes:
        data = {
            "server": None if self.server is None else self.server.to_dict(),
            "limit_per_24h": self.limit,
            "rules": [r.to_dict() for r in self.rules],
        }
        return (json.dumps(data, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: Any, path: Path) -> NotifyConfig:
        try:
            server = data.get("server")
            return cls(
                server=None if server is None else NotifyServer.from_dict(server),
                rules=tuple(Rule.from_dict(r) for r in data.get("rules", [])),
                limit=int(data.get("limit_per_24h", DEFAULT_LIMIT)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise TenantError(
                f"the notification settings {path} cannot be read: "
                + (f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)),
                hint=_RESTORE_HINT,
            ) from exc


_RESTORE_HINT = (
    "restore the file from a backup, or remove it and set the server and rules again "
    "(`flowrt notify server set`, `flowrt notify rule add`)"
)


def config_path(tenant: Tenant) -> Path:
    return tenant.root / "notify.json"


def load_config(tenant: Tenant) -> NotifyConfig:
    """The stored settings; empty (no server, no rules) when none were set."""
    path = config_path(tenant)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return NotifyConfig()
    except OSError as exc:
        raise TenantError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TenantError(
            f"the notification settings {path} are damaged: byte {exc.start} is not UTF-8 text",
            hint=_RESTORE_HINT,
        ) from None  # the message says where; no codec's words in the output
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TenantError(
            f"the notification settings {path} are not JSON: {exc}", hint=_RESTORE_HINT
        ) from exc
    return NotifyConfig.from_json(data, path)


class ConfigEdit:
    """The settings being changed inside :func:`edit_config`; ``value`` is saved at the end."""

    def __init__(self, value: NotifyConfig) -> None:
        self.value = value


@contextlib.contextmanager
def edit_config(tenant: Tenant) -> Iterator[ConfigEdit]:
    """Lock, load, let the body replace ``edit.value``, save atomically; nothing is saved
    when the body raises."""
    lock_path = tenant.root / ".notify.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise TenantError(f"cannot open the lock file {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = load_config(tenant)
        edit = ConfigEdit(before)
        yield edit
        if edit.value != before:
            atomic_write(config_path(tenant), edit.value.to_json(), mode=0o600)
    finally:
        os.close(fd)


def replace(config: NotifyConfig, **changes: Any) -> NotifyConfig:
    return dataclasses.replace(config, **changes)
