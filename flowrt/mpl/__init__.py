"""The message-processing log (MPL): what happened to every message, kept per tenant.

- :mod:`flowrt.mpl.model`: the frozen values an MPL entry is read back as.
- :mod:`flowrt.mpl.store`: the SQLite store (WAL), its queries, purge and retention.
- :mod:`flowrt.mpl.recorder`: the batching recorder the engine writes through.
- :mod:`flowrt.mpl.ids`: time-ordered message IDs (UUIDv7) that keep recording fast.
- :mod:`flowrt.mpl.render` and :mod:`flowrt.mpl.follow`: text output and ``tail`` for the CLI.
"""

from flowrt.mpl.ids import new_message_id
from flowrt.mpl.model import (
    ErrorInfo,
    LogLevel,
    LogLine,
    MplEntry,
    MplStatus,
    MplSummary,
    Run,
    Step,
    StepContent,
    StepStatus,
)
from flowrt.mpl.recorder import EntryHandle, MplRecorder, RunHandle
from flowrt.mpl.store import MplStore

__all__ = [
    "EntryHandle",
    "ErrorInfo",
    "LogLevel",
    "LogLine",
    "MplEntry",
    "MplRecorder",
    "MplStatus",
    "MplStore",
    "MplSummary",
    "Run",
    "RunHandle",
    "Step",
    "StepContent",
    "StepStatus",
    "new_message_id",
]
