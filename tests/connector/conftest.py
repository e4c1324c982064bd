"""Fixtures for the connector tests (helpers are in ``connector_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from flowrt.connector import ConnectorConfig, ConnectorServer, load_config, make_logger
from tests.connector.connector_support import (
    LOCATION,
    TOKEN,
    TOKEN_ENV,
    Backends,
    Events,
    MakeConfig,
    StartConnector,
    WriteConfig,
    toml_text,
)


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a connector TOML; keyword arguments are top-level keys (None drops a default)."""
    counter = iter(range(1_000))

    def write(
        mappings: list[dict[str, Any]],
        *,
        truststore: Path | None = None,
        name: str | None = None,
        **top: Any,
    ) -> Path:
        values: dict[str, Any] = {
            "location_id": LOCATION,
            "listen": "127.0.0.1:0",
            "token_env": TOKEN_ENV,
            "connect_timeout": 5,
            "handshake_timeout": 5,
        }
        values.update(top)
        values = {k: v for k, v in values.items() if v is not None}
        tls = {"truststore": str(truststore)} if truststore is not None else None
        path = tmp_path / (name or f"connector-{next(counter)}.toml")
        path.write_text(toml_text(values, mappings, tls), encoding="utf-8")
        return path

    return write


@pytest.fixture
def make_config(write_config: WriteConfig) -> MakeConfig:
    def make(mappings: list[dict[str, Any]], **kwargs: Any) -> ConnectorConfig:
        return load_config(write_config(mappings, **kwargs), environ={TOKEN_ENV: TOKEN})

    return make


@pytest.fixture
async def start_connector() -> AsyncIterator[StartConnector]:
    servers: list[ConnectorServer] = []

    async def start(config: ConnectorConfig) -> tuple[ConnectorServer, Events]:
        events = Events()

        def capture(_: Any, method: str, event_dict: Any) -> Any:
            events.append({"level": method, **event_dict})
            raise structlog.DropEvent

        server = ConnectorServer(config, logger=make_logger(processors=[capture]))
        await server.start()
        servers.append(server)
        return server, events

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    yield b
    await b.close()


@pytest.fixture
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    yield
