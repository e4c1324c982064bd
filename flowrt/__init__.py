"""flowrt: an integration-flow runtime for mail.

The public API is what a ``script "module:function"`` step needs::

    from flowrt import Exchange, StepException

    def enrich(exchange: Exchange) -> None:
        if not exchange.headers.get("X-Customer"):
            raise StepException("no X-Customer header")
        exchange.properties["customer"] = exchange.headers.get("X-Customer")

Everything else is internal and may change between versions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flowrt.errors import MessagingException, ProcessingError, StepException

if TYPE_CHECKING:
    from flowrt.engine.exchange import Attachment, Exchange, Headers

    __version__: str

__all__ = [
    "Attachment",
    "Exchange",
    "Headers",
    "MessagingException",
    "ProcessingError",
    "StepException",
    "__version__",
]

# Loaded when first asked for: every `flowrt` command imports this package, and most of them
# (status, mpl, deploy ...) need neither the engine nor the installed version's metadata.
_LAZY = {"Attachment", "Exchange", "Headers"}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("flowrt")
        except PackageNotFoundError:  # running from a source tree that was not installed
            value = "0.0.0+unknown"
    elif name in _LAZY:
        value = getattr(importlib.import_module("flowrt.engine.exchange"), name)
    else:
        raise AttributeError(f"module 'flowrt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
