"""flowrt: an integration-flow runtime for mail.

The public API is what a ``script "module:function"`` step needs::

    from flowrt import Exchange, StepException

    def enrich(exchange: Exchange) -> None:
        if not exchange.headers.get("X-Customer"):
            raise StepException("no X-Customer header")
        exchange.properties["customer"] = exchange.headers.get("X-Customer")

Everything else is internal and may change between versions.
"""

from importlib.metadata import PackageNotFoundError, version

from flowrt.engine.exchange import Attachment, Exchange, Headers
from flowrt.errors import MessagingException, ProcessingError, StepException

try:
    __version__ = version("flowrt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Attachment",
    "Exchange",
    "Headers",
    "MessagingException",
    "ProcessingError",
    "StepException",
    "__version__",
]
