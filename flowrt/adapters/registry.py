"""The seam between flowrt and its adapters: the one place an adapter plugs in.

An adapter module (one of :data:`BUILTIN`) defines ``ADAPTER = Adapter(...)``: its DSL blocks
(:class:`~flowrt.dsl.spec.BlockSpec`, each building the adapter's own model) and the import
path of its factory. The DSL reads the blocks (:func:`blocks`); the runtime, ``flowrt
simulate`` and deploy checks reach the adapter only through :class:`AdapterRuntime`, imported
when a flow first runs (:func:`factory`). Block specs must not import a protocol library,
so that ``flowrt validate`` never loads one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import importlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from flowrt.dsl.spec import BlockSpec

if TYPE_CHECKING:
    from flowrt.dsl.diagnostics import Diagnostic
    from flowrt.dsl.model import ReceiverBlock, SenderBlock
    from flowrt.engine.exchange import Exchange
    from flowrt.security import TenantSecurity
    from flowrt.source_state import Partition, Verdict

__all__ = [
    "BUILTIN",
    "Adapter",
    "AdapterRuntime",
    "Adapters",
    "Composer",
    "Cron",
    "Daily",
    "Delivery",
    "Every",
    "Handler",
    "Idle",
    "PollOutcome",
    "Schedule",
    "Source",
    "SourceHealth",
    "adapter",
    "blocks",
    "references",
]

#: the adapter modules flowrt ships; each defines ``ADAPTER``
BUILTIN = ("flowrt.adapters.mail.register",)

#: what a source hands each exchange to; true (a Verdict says more: when to try again, whether
#: the attempts are over) when the flow finished with it, and only then
#: may the source tell its origin (mark the mail read, delete it ...)
Handler = Callable[["Exchange"], Awaitable["bool | Verdict"]]


@dataclasses.dataclass(frozen=True)
class Adapter:
    """An adapter as the registry knows it.

    ``factory`` is ``"module:attribute"`` naming a callable that takes no argument and returns
    an :class:`AdapterRuntime`; it is imported only when a flow runs or is simulated.
    ``checks`` names a function ``(block, security) -> list[Diagnostic]``: what deploy checks
    in the tenant (credentials, keystore aliases, locations); it must not load a protocol.
    """

    name: str
    blocks: tuple[BlockSpec, ...]
    factory: str
    checks: str | None = None


class SourceHealth(Protocol):
    @property
    def last_poll(self) -> float | None: ...
    @property
    def last_success(self) -> float | None: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def note(self) -> str:
        """Why the last poll did not run although nothing failed (a lock held elsewhere)."""
        ...


class PollOutcome(Protocol):
    """What a poll says to the schedule. An outcome may also have ``more`` (True: it
    stopped at ``max-messages`` with mail left; a ``poll every`` source polls again at once)."""

    @property
    def busy(self) -> str:
        """Why the poll did not run (another runtime holds the source's lock), or ""."""
        ...


class Every(Protocol):
    """``poll every INTERVAL``."""

    @property
    def kind(self) -> Literal["every"]: ...
    @property
    def interval(self) -> dt.timedelta: ...


class Daily(Protocol):
    """``poll daily at HH:MM [TZ]``."""

    @property
    def kind(self) -> Literal["daily"]: ...
    @property
    def at(self) -> dt.time: ...
    @property
    def tz(self) -> str | None: ...


class Cron(Protocol):
    """``poll cron "MIN HOUR DAY MONTH WEEKDAY" [TZ]``."""

    @property
    def kind(self) -> Literal["cron"]: ...
    @property
    def expression(self) -> str: ...
    @property
    def tz(self) -> str | None: ...


class Idle(Protocol):
    """``poll idle``: the source holds a session and polls when told of new data."""

    @property
    def kind(self) -> Literal["idle"]: ...


Schedule: TypeAlias = Every | Daily | Cron | Idle


class Source(Protocol):
    """A running sender: yields exchanges to its handler. When it polls is the runtime's
    job (:mod:`flowrt.runtime.schedule`), from its ``schedule``."""

    @property
    def schedule(self) -> Schedule: ...
    @property
    def health(self) -> SourceHealth: ...
    @property
    def last_hint(self) -> str:
        """The hint of the last failed or skipped poll."""
        ...

    async def poll_once(self) -> PollOutcome:
        """One poll; raises the error chain when it fails (after recording it)."""
        ...

    async def session(self, stop: asyncio.Event) -> float:
        """``idle``: one held session until ``stop`` (raises when it fails); the seconds to
        wait before the next one (0: at once)."""
        ...

    async def aclose(self) -> None:
        """Close what the source keeps open between polls (its flow stops)."""
        ...


class Delivery(Protocol):
    """A running receiver: delivers an exchange (raises a FlowrtError when it cannot)."""

    async def deliver(self, exchange: Exchange) -> object: ...
    async def aclose(self) -> None: ...


class Composer(Protocol):
    """What a receiver would send, made without sending (``flowrt simulate``)."""

    def compose(self, exchange: Exchange) -> Any: ...


class AdapterRuntime(Protocol):
    """An adapter at work in one process; holds what its flows share (pools, token caches)."""

    def source(
        self,
        block: SenderBlock,
        security: TenantSecurity,
        handler: Handler,
        state: Any,
        *,
        name: str,
        partition: Partition | None = None,
    ) -> Source: ...

    def workers(self, block: SenderBlock) -> int:
        """How many processes work the sender's source together (``Partition.count``)."""
        ...

    def delivery(self, block: ReceiverBlock, security: TenantSecurity) -> Delivery: ...

    def composer(self, block: ReceiverBlock, keystore: object | None) -> Composer: ...

    async def send(
        self, delivery: Delivery, composed: Any, exchange: Exchange
    ) -> str: ...  # what the far end answered, for --live

    def needs_keys(self, block: ReceiverBlock) -> bool: ...  # the tenant keystore (S/MIME)

    def sample(self, block: SenderBlock, data: bytes) -> Exchange: ...

    def timeout_seconds(self, block: SenderBlock | ReceiverBlock) -> float: ...

    async def aclose(self) -> None: ...


def references(block: SenderBlock | ReceiverBlock, security: TenantSecurity) -> list[Diagnostic]:
    """The deploy checks of one block (credentials, aliases, locations), by its adapter."""
    path = adapter(block.adapter).checks
    if path is None:
        return []
    check: Callable[[Any, TenantSecurity], list[Diagnostic]] = _load(path)
    return check(block, security)


@functools.cache
def _adapters() -> Mapping[str, Adapter]:
    found: dict[str, Adapter] = {}
    for module_name in BUILTIN:
        registered: Adapter = importlib.import_module(module_name).ADAPTER
        found[registered.name] = registered
    return found


def adapter(name: str) -> Adapter:
    return _adapters()[name]


@functools.cache
def blocks() -> Mapping[tuple[str, str], BlockSpec]:
    """(block keyword, adapter name) -> spec, for every registered adapter."""
    return {
        (spec.keyword, name): spec
        for name, registered in _adapters().items()
        for spec in registered.blocks
    }


def _load(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Adapters:
    """The adapter runtimes of one process, made on first use and closed together."""

    def __init__(self) -> None:
        self._made: dict[str, AdapterRuntime] = {}

    def __getitem__(self, name: str) -> AdapterRuntime:
        made = self._made.get(name)
        if made is None:
            factory: Callable[[], AdapterRuntime] = _load(adapter(name).factory)
            made = self._made[name] = factory()
        return made

    async def aclose(self) -> None:
        for made in self._made.values():
            await made.aclose()
