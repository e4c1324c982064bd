"""Run one poll in a process that kills itself with SIGKILL right after the Nth idempotency
record was committed (with the records that ended together, in one transaction): the flow
has finished with the mail (its "sent" marker is on disk) and the state DB says so, but the
mailbox has not been changed yet.

    python -m tests.sender.crash_poller '{"port": ..., "kill_after": 3, ...}'

Used by test_sender_recovery.py; not a test module itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowrt.adapters.mail.sender.poller import MailPoller
from flowrt.engine.exchange import Exchange
from flowrt.net import ProxyRoute
from flowrt.runtime.state import StateDB
from tests.sender.conftest import endpoint_for, make_sender
from tests.servers import MailboxUser


def main(config: dict[str, Any]) -> None:
    original = StateDB.record_done
    written = 0

    original_batch = StateDB.batch

    def record_done(self: StateDB, *args: Any, **kwargs: Any) -> None:
        nonlocal written
        original(self, *args, **kwargs)
        written += 1
        if written >= config["kill_after"] and not self._batching:
            os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def batch(self: StateDB) -> Iterator[None]:
        with original_batch(self):
            yield
        if written >= config["kill_after"]:  # committed: now the process dies
            os.kill(os.getpid(), signal.SIGKILL)

    StateDB.record_done = record_done  # type: ignore[method-assign]
    StateDB.batch = batch  # type: ignore[method-assign]

    async def handle(exchange: Exchange) -> bool:
        with open(config["sent"], "a", encoding="utf-8") as sent:
            sent.write((exchange.headers.get("Subject") or "") + "\n")
            sent.flush()
            os.fsync(sent.fileno())
        return True

    sender = make_sender(config["protocol"], port=config["port"], protection=config["protection"])
    tls = ssl.create_default_context(cadata=Path(config["ca"]).read_text())
    route = ProxyRoute("127.0.0.1", config["socks"]) if config.get("socks") else None
    user = MailboxUser(config["user"], config["password"])
    endpoint = endpoint_for(sender, user, tls=tls, route=route)
    with StateDB(config["state"]) as state:
        poller = MailPoller(sender, endpoint, handle, state)
        asyncio.run(poller.poll_once())


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
