"""Where one receiver sends to, and how: the facts every SMTP message and log line names."""

from __future__ import annotations

import dataclasses

from flowrt.net import ProxyRoute


@dataclasses.dataclass(frozen=True)
class SmtpTarget:
    """Where one receiver sends to, and how: what every error message names."""

    host: str
    port: int
    protection: str
    timeout: float
    route: ProxyRoute | None = None
    receiver: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def fix_command(self) -> str:
        """The connectivity test that shows the server's chain and imports it (through the
        same connector when the receiver goes through one: the virtual host resolves only
        there)."""
        via = ""
        if self.route is not None and self.route.location:
            via = f" --proxy on-premise --location {self.route.location}"
        return f"flowrt test smtp {self.address} --protection {self.protection}{via} --import"

    @property
    def timeout_ms(self) -> int:
        # JavaMail prints the timeout in milliseconds; operators compare these texts.
        return round(self.timeout * 1000)

    def log_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "receiver": self.receiver,
        }
        if self.route is not None:
            fields["route"] = self.route.describe()
        return fields
