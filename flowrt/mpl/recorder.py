"""The recorder: the API the engine calls to write the message-processing log.

Usage, for one message::

    recorder = MplRecorder(MplStore(tenant.mpl_path), level=LogLevel.INFO, owns_store=True)
    entry = recorder.begin(new_message_id(), correlation_id, "invoice-forward", "3",
                           "mail imap plant@mail.plant.example:143/INBOX",
                           ["mail smtp accounting@smtp.example.com:465"])
    run = entry.start_run()
    t0 = time.time(); ...; run.step("step1", "12", "", StepStatus.COMPLETED, t0, time.time())
    run.finish(MplStatus.COMPLETED)
    entry.complete(MplStatus.COMPLETED)
    ...
    recorder.close()                       # flushes everything still buffered

Why it is shaped like this: the engine's goal is tens of thousands of messages per second on
one core, so a call only touches plain Python objects (a step is one short string, its JSON
form, appended to a list; times are ``time.time()`` floats). Handles are marked "dirty" in an
in-memory buffer, and dirty entries are turned into rows and written in one transaction
(multi-row statements) when ``batch_size`` of them are waiting, by the call that fills the
batch, or else every ``flush_interval`` seconds by a timer thread, so a PROCESSING entry shows
in ``flowrt mpl list`` within the interval even when nothing else happens. A message that
begins and ends between two flushes costs one row write. Under load, the call that fills a
batch pays for the write (about 6 ms per 1000 entries at ``info``): that is the cheapest place
on a busy core.

What the buffer holds is kept small on purpose. An entry that reaches a final status is turned
into its row (a tuple of strings and numbers) at once, and the buffer keeps only that row, not
the handles: the engine drops them when the message is done, so they are freed right away
instead of surviving, hundreds at a time, into the garbage collector's older generations, whose
full passes (over every live object of the process) cost more than the recording itself did.
Custom properties and trace content go to the recorder's own pending lists as rows when they are
recorded; a flush writes them in the same transaction as the entries marked before it.

Threading: the recorder (``begin``, ``flush``, ``close``) may be used from any thread. One
entry handle and its runs belong to one thread at a time: the engine's loop thread, in
practice. A flush in another thread only reads handles; a snapshot taken halfway through an
update is corrected by the next flush, because every state change marks the handle dirty
again after the change.

What each level records is described on :class:`~flowrt.mpl.model.LogLevel`. At ``none`` an
entry is still written (minimal: ids, flow, status, times, custom properties, error
information), so a failure is never invisible.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowrt.errors import MplError, chain_levels, find_hint, render_chain
from flowrt.mpl.model import CONTENT_LIMIT, LogLevel, MplStatus, StepStatus

if TYPE_CHECKING:
    from flowrt.store.api import MplBackend

__all__ = ["EntryHandle", "Headers", "MplRecorder", "RunHandle"]

_log = logging.getLogger(__name__)

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
"""Message headers for trace content: a mapping, or (name, value) pairs (names may repeat)."""

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# The MPL level a `log` line needs before it is recorded. Unknown levels count as info.
_LOG_LINE_RANK = {"trace": 3, "debug": 2, "info": 1, "warn": 1, "warning": 1, "error": 1}

# Trace content never shows secrets a header might carry.
_SECRET_HEADER = re.compile(r"authorization|password|passwd|secret|token|credential|api-?key", re.I)
_REDACTED = "***"


class RunHandle:
    """One attempt at processing a message. Returned by :meth:`EntryHandle.start_run`.

    It holds its entry by a weak reference: with a strong one, entry and run would form a
    reference cycle, and every message's handles would wait for the cyclic garbage collector
    (measured: about 4 µs per message) instead of being freed when the engine drops them.
    """

    __slots__ = ("_entry", "_on", "_traces", "number", "start", "status", "steps", "stop")

    def __init__(self, entry: EntryHandle, number: int, start: float) -> None:
        self._entry = weakref.ref(entry)
        self._on = entry._steps_on
        self._traces = entry.traces
        self.number = number
        self.start = start
        self.stop: float | None = None
        self.status = MplStatus.PROCESSING
        self.steps: list[str] = []
        """Each step as the JSON array the store keeps (see :data:`_schema.ENTRY_COLUMNS`)."""

    def step(
        self,
        step_id: str,
        model_step_id: str,
        branch: str,
        status: StepStatus | str,
        start: float,
        stop: float,
        error: str | BaseException | None = None,
        content: tuple[Headers, str | bytes] | None = None,
    ) -> None:
        """Record one executed step. ``start``/``stop`` are ``time.time()`` seconds;
        ``model_step_id`` is the DSL line number as text; ``branch`` is ``""`` outside a
        split. ``error`` is a one-line summary (an exception is summarised as ``Type:
        message``). ``content`` is ``(headers, body)`` after the step; it is kept only at
        ``trace`` (see :attr:`EntryHandle.traces`), capped at the recorder's content limit."""
        if not self._on:
            return
        if status.__class__ is not StepStatus:
            status = StepStatus(status)
        if error is None:
            end = "null]"
        else:
            if not isinstance(error, str):
                error = f"{type(error).__name__}: {error}"
            end = _encode(error) + "]"
        key = (step_id, model_step_id, branch)
        prefix = _step_prefixes.get(key)
        if prefix is None:
            prefix = _step_prefix(key)
        # Written as its JSON text right away: [step_id, model_step_id, branch, status, start
        # offset µs from the run start, duration µs, error]. Integer microseconds, as JSON
        # has them; a string costs the garbage collector nothing, a tuple of enums would.
        self.steps.append(
            f'{prefix},"{status._value_}",{int((start - self.start) * 1e6)},'
            f"{int((stop - start) * 1e6)},{end}"
        )
        if content is not None and self._traces:
            entry = self._entry()
            if entry is not None:
                entry._add_content(self.number, len(self.steps) - 1, content)

    def finish(self, status: MplStatus | str, *, stop: float | None = None) -> None:
        """End this run with ``status`` (COMPLETED, FAILED, RETRY, ...)."""
        self.status = status if isinstance(status, MplStatus) else MplStatus(status)
        self.stop = time.time() if stop is None else stop
        entry = self._entry()
        if entry is not None:
            entry._recorder._mark(entry)


class EntryHandle:
    """The MPL entry of one message while it is processed. Returned by
    :meth:`MplRecorder.begin`; every method is cheap and never does I/O.

    ``traces`` says whether step content is kept (level ``trace``): build the ``content``
    argument of :meth:`RunHandle.step` only when it is true.

    :meth:`MplRecorder.begin`, :meth:`RunHandle.finish`, :meth:`fail` and :meth:`complete`
    mark the entry for writing; steps, log lines and properties recorded in between are
    written with it (so a PROCESSING entry shows its steps once a run finishes). A final
    status (:meth:`complete`, :meth:`fail` or :meth:`filtered`) should come last: the entry is
    turned into its row then, and a later change is written only if the entry is marked again
    (properties and trace content are rows of their own, written at the next flush anyway).
    """

    __slots__ = (
        "__weakref__",
        "_recorder",
        "_steps_on",
        "application_id",
        "correlation_id",
        "error",
        "filter_note",
        "flow",
        "level",
        "log_end",
        "log_lines",
        "log_start",
        "mail_from",
        "message_id",
        "properties",
        "receivers",
        "runs",
        "sender",
        "simulation",
        "status",
        "subject",
        "traces",
        "version",
    )

    def __init__(
        self,
        recorder: MplRecorder,
        message_id: str,
        correlation_id: str,
        flow: str,
        version: str,
        sender: str,
        receivers: tuple[str, ...],
        application_id: str | None,
        simulation: bool,
        level: LogLevel,
        start: float,
        subject: str = "",
        mail_from: str = "",
    ) -> None:
        self._recorder = recorder
        self.subject = subject
        self.mail_from = mail_from
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.application_id = application_id
        self.flow = flow
        self.version = version
        self.sender = sender
        self.receivers = receivers
        self.simulation = simulation
        self.level = level
        self.log_start = start
        self.log_end: float | None = None
        self.status = MplStatus.PROCESSING
        self.filter_note: str | None = None
        # (chain text, levels JSON, hint, failed step) of the last failure
        self.error: tuple[str, str, str | None, str | None] | None = None
        self.runs: list[RunHandle] = []
        self.log_lines: list[tuple[int, str, str]] = []  # (epoch µs, level, text)
        self.properties: list[tuple[str, str]] = []
        self._steps_on = level is not LogLevel.NONE
        self.traces = level is LogLevel.TRACE

    def start_run(self, *, start: float | None = None) -> RunHandle:
        """Begin the next attempt (run 1, 2, ...). At level ``none`` runs are not stored."""
        run = RunHandle(self, len(self.runs) + 1, time.time() if start is None else start)
        if self._steps_on:
            self.runs.append(run)
        return run

    def log(self, level: str, text: str) -> None:
        """A line from a ``log`` step; kept if the entry's level admits ``level``
        (info/warn/error at ``info``, debug from ``debug``, trace at ``trace``)."""
        needed = _LOG_LINE_RANK.get(level.lower(), 1)
        if needed <= self.level.rank:
            self.log_lines.append((int(time.time() * 1e6), level.lower(), text))

    def custom_property(self, name: str, value: str) -> None:
        """A custom header property (``mpl property NAME = EXPR``); a name may repeat.
        Kept at every level: these are what operators search by."""
        value = str(value)
        seq = len(self.properties)
        self.properties.append((name, value))
        self._recorder._add_property((self.message_id, seq, name, value))

    def set_application_id(self, application_id: str | None) -> None:
        """The application ID, when the flow learns it while processing."""
        self.application_id = application_id

    def filtered(self, note: str) -> None:
        """A ``filter`` step dropped the message: keep the note and complete the entry."""
        self.filter_note = note
        self.complete(MplStatus.COMPLETED)

    def fail(
        self,
        exc: BaseException,
        status: MplStatus | str = MplStatus.FAILED,
        failed_step: str | None = None,
    ) -> None:
        """Record ``exc`` as the entry's error (chain text, levels, hint, as
        :mod:`flowrt.errors` renders them) and set ``status``. A final status ends the
        entry; ``RETRY`` keeps it open for the next run. A later success keeps the error."""
        levels = chain_levels(exc)
        self.error = (
            render_chain(levels),
            _encode([[lv.type, lv.message] for lv in levels]),
            find_hint(exc),
            failed_step,
        )
        self.complete(status)

    def complete(
        self, status: MplStatus | str = MplStatus.COMPLETED, *, end: float | None = None
    ) -> None:
        """Set the entry's status. A final status (everything but PROCESSING and RETRY) sets
        the log end and finishes any run still open with the same status."""
        if status.__class__ is not MplStatus:
            status = MplStatus(status)
        self.status = status
        if status is _PROCESSING or status is _RETRY:
            self._recorder._mark(self)
            return
        now = time.time() if end is None else end
        for run in self.runs:
            if run.stop is None:
                run.stop = now
                run.status = self.status
        self.log_end = now
        # Final: the row is all that is left to write; the buffer keeps it, not the handle.
        self._recorder._put(self.message_id, self._row())

    def _add_content(self, run: int, step: int, content: tuple[Headers, str | bytes]) -> None:
        headers, body = content
        self._recorder._add_content(
            (self.message_id, run, step, *_capture(headers, body, self._recorder.content_limit))
        )

    def _row(self) -> tuple[Any, ...]:
        """The entries row for the state right now (a tuple of strings and numbers only)."""
        return (
            self.message_id,
            self.correlation_id,
            self.application_id,
            self.flow,
            self.version,
            self.sender,
            _receivers_json(self.receivers),
            self.status._value_,
            self.log_start,
            self.log_end,
            self.level._value_,
            1 if self.simulation else 0,
            self.filter_note,
            *(self.error or _NO_ERROR),
            _runs_json(self.runs) if self.runs else "[]",
            _encode(self.log_lines) if self.log_lines else "[]",
            self.subject,
            self.mail_from,
            self._recorder.node,
        )


class MplRecorder:
    """Buffers MPL entries in memory and writes them to ``store`` in batches.

    ``level`` is the default for :meth:`begin`. When ``batch_size`` entries are waiting, the
    call that made the batch full writes it; otherwise a timer thread writes what is waiting
    every ``flush_interval`` seconds. If writes fail, entries are kept and retried; a call
    raises MplError only once ``max_pending`` entries are waiting (memory stays bounded and
    the engine learns that recording is broken). ``content_limit`` caps trace content per
    step (bytes). ``node`` is written into every entry (the runtime node recording it, so
    that another node can close what a dead one left open). With ``owns_store`` the store
    is closed by :meth:`close`. Use as a context
    manager, or call :meth:`close`: entries still buffered are lost without it.
    """

    def __init__(
        self,
        store: MplBackend,
        *,
        level: LogLevel = LogLevel.INFO,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        max_pending: int = 50_000,
        content_limit: int = CONTENT_LIMIT,
        owns_store: bool = False,
        node: str = "",
    ) -> None:
        self.store = store
        self.node = node
        self.level = LogLevel(level)
        self.content_limit = content_limit
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_pending = max(max_pending, batch_size)
        self._owns_store = owns_store
        self._lock = threading.Lock()  # guards _dirty, _props and _contents
        self._flush_lock = threading.Lock()  # one flush at a time: writes stay in order
        # By message ID, in the order first marked: an open entry's handle (its row is made
        # when it is written), or the row of an entry that reached a final status.
        self._dirty: dict[str, EntryHandle | tuple[Any, ...]] = {}
        self._props: list[tuple[Any, ...]] = []  # property rows not written yet
        self._contents: list[tuple[Any, ...]] = []  # content rows not written yet
        self._retry_at = 0.0  # after a failed write, when callers may try again
        self._closed = False
        self._stop = threading.Event()
        self.written = 0
        """How many entry rows were written (a rewritten entry counts again)."""
        # Checkpoints (the WAL copied into the database file) in the timer thread, beside the
        # engine's thread, not in the call that happens to commit past 1000 pages.
        self.store.set_checkpointing(background=True)
        self._timer = threading.Thread(target=self._timer_loop, name="flowrt-mpl", daemon=True)
        self._timer.start()

    # ------------------------------------------------------------------ engine API

    def begin(
        self,
        message_id: str,
        correlation_id: str,
        flow: str,
        version: str | int,
        sender: str,
        receivers: Sequence[str],
        *,
        application_id: str | None = None,
        simulation: bool = False,
        level: LogLevel | str | None = None,
        start: float | None = None,
        subject: str = "",
        mail_from: str = "",
    ) -> EntryHandle:
        """Start the entry of one message, status PROCESSING. ``message_id`` must be unique;
        use :func:`flowrt.mpl.ids.new_message_id` (time-ordered IDs keep writes fast).
        Beginning an ID again overwrites that entry. ``level`` overrides the recorder's level
        for this entry (a flow's own log level); ``simulation`` marks an entry recorded by
        ``flowrt simulate``; ``start`` defaults to now (``time.time()``); ``subject`` and
        ``mail_from`` are the mail's, for `flowrt mpl list`."""
        if self._closed:
            raise MplError("the MPL recorder is closed")
        if level is None:
            level = self.level
        elif level.__class__ is not LogLevel:
            level = LogLevel(level)
        entry = EntryHandle(
            self,
            message_id,
            correlation_id,
            flow,
            version if version.__class__ is str else str(version),
            sender,
            receivers if receivers.__class__ is tuple else tuple(receivers),
            application_id,
            simulation,
            level,
            time.time() if start is None else start,
            subject,
            mail_from,
        )
        self._put(message_id, entry)
        return entry

    def flush(self) -> None:
        """Write everything buffered now, in the calling thread; MplError if that fails."""
        self._flush()

    def close(self) -> None:
        """Stop the timer thread, write what is left, and close the store if it is ours."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._timer.join()
        try:
            self._flush()
        finally:
            if self._owns_store:
                self.store.close()
            else:
                with contextlib.suppress(MplError):
                    self.store.set_checkpointing(background=False)

    def __enter__(self) -> MplRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Entries changed since they were last written."""
        return len(self._dirty)

    # ------------------------------------------------------------------ buffering

    def _mark(self, entry: EntryHandle) -> None:
        self._put(entry.message_id, entry)

    def _put(self, message_id: str, entry: EntryHandle | tuple[Any, ...]) -> None:
        with self._lock:
            self._dirty[message_id] = entry
            pending = len(self._dirty)
        if pending >= self._batch_size and not self._closed:
            self._flush_full(pending)

    def _add_property(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._props.append(row)

    def _add_content(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._contents.append(row)

    def _flush_full(self, pending: int) -> None:
        """Write a full batch in the calling thread.

        Why not hand it to a writer thread: sqlite3 releases the GIL around every statement,
        and a thread that wants it back from a busy engine thread waits up to the switch
        interval (5 ms) each time, so on a busy core a writer thread falls behind (measured:
        about 20 % fewer messages per second at info, and far behind at trace).
        """
        if time.monotonic() < self._retry_at:
            if pending >= self._max_pending:
                raise MplError(
                    f"MPL writes are failing and {pending} entries are waiting",
                    hint="see the earlier MPL warning in the log: is the disk full, or the "
                    "database locked by another process?",
                )
            return
        try:
            self._flush()
        except MplError:
            self._retry_at = time.monotonic() + self._interval
            if pending >= self._max_pending:
                raise

    def _timer_loop(self) -> None:
        # A steady cadence: what the flush and the checkpoint take comes out of the wait, so
        # an entry still shows within the interval (plus one write).
        due = time.monotonic() + self._interval
        while not self._stop.wait(max(due - time.monotonic(), 0.0)):
            due = time.monotonic() + self._interval
            try:
                self._flush()
            except MplError as exc:
                _log.warning("MPL write failed, will retry: %s", exc)
            try:
                self.store.checkpoint()
            except MplError as exc:  # the writes checkpoint themselves past a safety limit
                _log.warning("MPL checkpoint failed, will retry: %s", exc)

    def _flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                if not self._dirty and not self._props and not self._contents:
                    return
                batch, self._dirty = self._dirty, {}
                props, self._props = self._props, []
                contents, self._contents = self._contents, []
            entries = [
                entry if entry.__class__ is tuple else entry._row()  # type: ignore[union-attr]
                for entry in batch.values()
            ]
            try:
                self.store.write_batch(entries, props, contents)
            except MplError:
                with self._lock:
                    # Keep what was not written, ahead of newer changes, for the next flush.
                    batch.update(self._dirty)
                    self._dirty = batch
                    self._props = props + self._props
                    self._contents = contents + self._contents
                raise
            self.written += len(entries)
            self._retry_at = 0.0


_PROCESSING = MplStatus.PROCESSING
_RETRY = MplStatus.RETRY
_NO_ERROR = (None, None, None, None)


def _runs_json(runs: list[RunHandle]) -> str:
    """``[[number, start µs, stop µs, status, [step, ...]], ...]``: the JSON the store reads,
    joined from the steps' ready-made JSON texts."""
    return (
        "["
        + ",".join(
            [
                f"[{r.number},{int(r.start * 1e6)},"
                f"{'null' if r.stop is None else int(r.stop * 1e6)},"
                f'"{r.status._value_}",[{",".join(r.steps)}]]'
                for r in runs
            ]
        )
        + "]"
    )


_step_prefixes: dict[tuple[str, str, str], str] = {}


def _step_prefix(key: tuple[str, str, str]) -> str:
    """``["step_id","model_step_id","branch"``: how a step's JSON starts. A flow has a few of
    these, and they are encoded once."""
    if len(_step_prefixes) > 4096:
        _step_prefixes.clear()
    prefix = _step_prefixes[key] = _encode(key)[:-1]
    return prefix


_receivers_cache: dict[tuple[str, ...], str] = {}


def _receivers_json(receivers: tuple[str, ...]) -> str:
    """The receivers of a flow are the same for each of its messages: encode them once."""
    text = _receivers_cache.get(receivers)
    if text is None:
        if len(_receivers_cache) > 1024:
            _receivers_cache.clear()
        text = _receivers_cache[receivers] = _encode(receivers)
    return text


def _capture(headers: Headers, body: str | bytes, limit: int) -> tuple[str, str, int, int]:
    """(headers JSON, body, truncated flag, original size) with headers + body <= ``limit``
    bytes of UTF-8; secret-looking headers are redacted."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    kept: list[tuple[str, str]] = []
    used = 0
    truncated = False
    size = 0
    for name, value in pairs:
        name = str(name)
        value = _REDACTED if _SECRET_HEADER.search(name) else str(value)
        cost = len(name.encode()) + len(value.encode()) + 4  # "Name: value\r\n"
        size += cost
        if used + cost <= limit and not truncated:
            kept.append((name, value))
            used += cost
        else:
            truncated = True
    raw = text.encode("utf-8")
    size += len(raw)
    room = limit - used
    if len(raw) > room:
        truncated = True
        text = raw[: max(room, 0)].decode("utf-8", "ignore")
    return _encode(kept), text, 1 if truncated else 0, size
