"""The on-premise connector: a SOCKS5 server beside the mail server, with virtual host mappings.

A flow that says ``proxy on-premise location "plant-1"`` connects through the connector that
serves location ``plant-1``: it authenticates with user = the location ID and password = the
location's access token, and asks for a *virtual* ``host:port``. The connector relays only
to the mapped internal ``host:port``; with a ``tcp-tls`` mapping it does the TLS handshake to
the back end itself, trusting only its own truststore, and the runtime side speaks plain
bytes. ``flowrt connector run connector.toml`` serves; ``flowrt connector check`` tries every
mapping. The configuration format is in :mod:`flowrt.connector.config` and ``example.toml``.

Modules: :mod:`.socks5` (wire format, pure), :mod:`.config`, :mod:`.dial` (back end
connection and failure reasons), :mod:`.relay` (the byte pump), :mod:`.server`, :mod:`.check`.
"""

from __future__ import annotations

from flowrt.connector._log import LogFormat, make_logger
from flowrt.connector.check import CheckResult, check_mappings
from flowrt.connector.config import ConnectorConfig, Mapping, hash_token, load_config
from flowrt.connector.server import ConnectorServer, serve

__all__ = [
    "CheckResult",
    "ConnectorConfig",
    "ConnectorServer",
    "LogFormat",
    "Mapping",
    "check_mappings",
    "hash_token",
    "load_config",
    "make_logger",
    "serve",
]
