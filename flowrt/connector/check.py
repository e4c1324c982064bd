"""``flowrt connector check``: try every mapping the way a CONNECT would, and say what failed.

Each mapping is dialled exactly as the server dials it (same timeout, same truststore, same
TLS name), so "reachable" here means a runtime's CONNECT would succeed as far as the back end
is concerned. The mappings are tried concurrently; the results keep the file's order.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from flowrt.connector.config import ConnectorConfig, Mapping
from flowrt.connector.dial import DialError, PeerCertificate, dial

__all__ = ["CheckResult", "check_mapping", "check_mappings"]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    mapping: Mapping
    outcome: str  # "reachable", or a DialError outcome: refused, unreachable, tls_untrusted...
    status: str  # what the line says after the colon
    reply: int | None = None  # the SOCKS5 reply a CONNECT would get, when not reachable
    certificate: PeerCertificate | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "reachable"

    def line(self) -> str:
        return f"{self.mapping.describe()}: {self.status}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "virtual": self.mapping.virtual,
            "internal": self.mapping.internal,
            "protocol": self.mapping.protocol,
            "ok": self.ok,
            "outcome": self.outcome,
            "status": self.status,
            "reply": self.reply,
            "certificate": dataclasses.asdict(self.certificate) if self.certificate else None,
        }


async def check_mapping(config: ConnectorConfig, mapping: Mapping) -> CheckResult:
    try:
        backend = await dial(
            mapping, tls_context=config.tls_context, timeout=config.connect_timeout
        )
    except DialError as exc:
        if exc.outcome == "refused":
            status = f"refused ({exc.reason})"
        elif exc.outcome in ("unreachable", "timeout", "dns_failure"):
            status = f"unreachable ({exc.reason})"
        else:
            status = exc.reason  # "TLS: ..." says it all
        return CheckResult(mapping, exc.outcome, status, int(exc.reply), exc.certificate)
    backend.abort()  # a probe: no need to say goodbye to the back end
    return CheckResult(mapping, "reachable", "reachable")


async def check_mappings(config: ConnectorConfig) -> list[CheckResult]:
    return list(await asyncio.gather(*(check_mapping(config, m) for m in config.mappings)))
