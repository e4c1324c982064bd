"""The one place a flow is wired to run: its compiled pipeline, its runner, its receivers.

The runtime (:class:`~flowrt.runtime.flow_instance.FlowInstance`) and ``flowrt simulate``
(:mod:`flowrt.runtime.simulation`) both wire a flow here, so that what a simulation runs
cannot drift from what the runtime runs; a simulation only swaps the last hop (``deliver``),
the retry wait (``sleep``) and adds an observer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowrt import metrics
from flowrt.adapters.registry import Adapters, Delivery
from flowrt.dsl.model import Flow
from flowrt.engine.exchange import Exchange
from flowrt.engine.pipeline import Pipeline, compile_flow
from flowrt.engine.runner import Deliver, Observer, Runner, Sleep
from flowrt.mpl.recorder import MplRecorder
from flowrt.security import TenantSecurity

__all__ = ["Wired", "wire"]


@dataclasses.dataclass
class Wired:
    pipeline: Pipeline
    runner: Runner
    #: the receivers the runner delivers to; empty when ``deliver`` was given
    deliveries: dict[str, Delivery]


def wire(
    flow: Flow,
    *,
    recorder: MplRecorder | Callable[[Pipeline], MplRecorder],
    adapters: Adapters,
    security: TenantSecurity | None,
    version: str,
    deliver: Deliver | None = None,
    folder: Path | None = None,
    logger: Any = None,
    simulation: bool = False,
    sleep: Sleep = asyncio.sleep,
    observer: Observer | None = None,
    guard: Callable[[], None] | None = None,
) -> Wired:
    """Compile ``flow`` and make its runner. Without ``deliver``, each receiver is made by
    its adapter (``security`` is then required) and the runner delivers to it. ``recorder``
    may be a function of the compiled pipeline (its MPL level is known only then).
    ``guard`` runs before each delivery to a real receiver; what it raises fails that
    delivery (the runtime checks there that its mailbox lease is still its own)."""
    pipeline = compile_flow(flow, folder=folder, logger=logger)
    deliveries: dict[str, Delivery] = {}
    if deliver is None:
        if security is None:
            raise ValueError("wiring real receivers needs the tenant's security")
        deliveries = {r.name: adapters[r.adapter].delivery(r, security) for r in flow.receivers}

        async def deliver(name: str, exchange: Exchange) -> None:
            if guard is not None:
                guard()
            try:
                await deliveries[name].deliver(exchange)
            except Exception as exc:
                metrics.send_done(flow.name, name, exc)
                raise
            metrics.send_done(flow.name, name)

    if not isinstance(recorder, MplRecorder):
        recorder = recorder(pipeline)
    runner = Runner(
        pipeline,
        recorder,
        deliver,
        version=version,
        simulation=simulation,
        sleep=sleep,
        observer=observer,
    )
    return Wired(pipeline, runner, deliveries)
