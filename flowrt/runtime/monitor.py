"""The web monitor inside the runtime process (``flowrt run --http ADDR``): served in the
runtime's event loop, stopped first on shutdown. The monitor package is imported only when
an address is given, so a runtime without it does not load the web stack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from flowrt.tenant import Tenant

if TYPE_CHECKING:
    from flowrt.monitor.server import MonitorServer

_log = structlog.get_logger("flowrt.runtime")


class Monitor:
    def __init__(self, tenant: Tenant, address: str | None, *, tls_alias: str | None) -> None:
        self._tenant = tenant
        self._address = address
        self._tls_alias = tls_alias
        self._server: MonitorServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, live_states: Callable[[], dict[str, str]], runtime_up: Callable[[], bool]
    ) -> None:
        """Bind and serve; a bad address or a missing token raises (the runtime does not
        start half-configured)."""
        if self._address is None:
            return
        from flowrt.monitor.server import monitor_server

        self._server = monitor_server(
            self._tenant,
            self._address,
            tls_alias=self._tls_alias,
            live_states=live_states,
            runtime_up=runtime_up,
        )
        self._task = asyncio.ensure_future(self._server.serve())
        _log.info("monitor serving", url=self._server.url)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.stop()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, 5.0)
