"""What a connectivity test is asked to do, parsed from the command line."""

from __future__ import annotations

import dataclasses

from flowrt.adapters.mail.spec.connection import default_port
from flowrt.dsl.values import split_host_port
from flowrt.errors import UsageError


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    protocol: str  # smtp, imap, pop3
    host: str
    port: int
    protection: str
    auth: str = "none"
    credential: str | None = None
    location: str | None = None
    timeout: float = 30.0
    validate: bool = True
    allow_plaintext_auth: bool = False
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    list_folders: bool = False
    check_mailbox: str | None = None
    user: str | None = None  # --auth oauth2: the mailbox to log in as
    # protection connector-tls: plain to the connector (protection "off"), which does TLS
    tls_by_connector: bool = False

    @property
    def shown_protection(self) -> str:
        return "connector-tls" if self.tls_by_connector else self.protection

    @property
    def title(self) -> str:
        via = f" via location {self.location}" if self.location else ""
        return f"{self.protocol} {self.host}:{self.port} ({self.shown_protection}){via}"

    @property
    def fix_command(self) -> str:
        via = f" --proxy on-premise --location {self.location}" if self.location else ""
        return (
            f"flowrt test {self.protocol} {self.host}:{self.port} "
            f"--protection {self.shown_protection}{via} --import"
        )


def parse_target(protocol: str, target: str, protection: str) -> tuple[str, int]:
    try:
        host, port = split_host_port(target)
    except ValueError as exc:
        raise UsageError(f"bad address {target!r}: {exc}") from None
    return host, port if port is not None else default_port(protocol, protection)
