"""What the rules react to: events read from the tenant, matched against the rules.

Each source reads what the runtime already writes, so the engine knows nothing of alerts:

* messages: the MPL, read incrementally from a watermark (the row id of the last entry seen,
  kept in the notification log), with unfinished entries watched until they end;
* flows in ERROR: the runtime status (``runtime/status.json``);
* failing pollers and stuck mailbox locks: the runtime state DB;
* expiring keystore entries: the keystore, checked at start and once a day.

A condition (a flow in ERROR, a stuck lock, an expiring entry) is alerted once per rule and
occurrence: its key is remembered in the notification log.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable

from flowrt.errors import summary_of_levels
from flowrt.mpl.model import MplEntry, MplStatus
from flowrt.notify.config import NotifyConfig, Rule
from flowrt.notify.store import NotifyLog, iso
from flowrt.runtime.status import ERROR, FlowStatus, read_status
from flowrt.security import TenantSecurity
from flowrt.security.keystore import valid_until
from flowrt.store import MplBackend, StateBackend, is_shared, open_mpl, open_state
from flowrt.tenant import Tenant

__all__ = ["Evaluation", "Evaluator", "Event", "dead_letters_since", "iso", "message_event"]

ALERTED_STATUSES = (MplStatus.FAILED, MplStatus.ESCALATED)
EXPIRY_EVERY = 86400.0
_WATERMARK = "mpl_row"
_FIRST_SEEN = "first_seen"  # JSON {condition key: when first seen}
_CONTENT_LIMIT = 4096


@dataclasses.dataclass(frozen=True)
class Event:
    """Something that happened, in words; never a secret, and message content only in
    ``content``, which a mail carries only when its rule says so."""

    trigger: str
    key: str  # one occurrence: alerted once per rule
    flow: str  # "" when it concerns the tenant
    title: str
    what: str
    summary: str = ""
    chain: str = ""
    hint: str = ""
    mpl_id: str = ""
    content: str = ""


def _ago(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{max(seconds, 0) / 60:.0f} minutes"


def dead_letters_since(store: MplBackend, watermark: int) -> list[MplEntry]:
    """Entries dead-lettered after row ``watermark`` (ESCALATED with the ``dead-letter``
    property: :meth:`MplStore.dead_letters`)."""
    return [entry for _, entry in store.dead_letters(after_row=watermark, limit=1000)]


def message_event(entry: MplEntry) -> Event:
    error = entry.error
    summary = summary_of_levels(error.levels) if error else ""
    ended = entry.log_end or entry.log_start
    step = f", in step {error.failed_step}" if error and error.failed_step else ""
    what = (
        f"Message {entry.message_id} of flow {entry.flow} (version {entry.flow_version}) "
        f"ended {entry.status.value} at {ended.strftime('%Y-%m-%dT%H:%M:%SZ')}{step}."
    )
    title = f"{entry.status.value} in flow {entry.flow}"
    if summary:
        title += f": {summary}"
    return Event(
        trigger="message-failed",
        key=f"mpl:{entry.message_id}",
        flow=entry.flow,
        title=title,
        what=what,
        summary=summary,
        chain=error.chain if error else "",
        hint=(error.hint or "") if error else "",
        mpl_id=entry.message_id,
        content=_content(entry),
    )


def _content(entry: MplEntry) -> str:
    """The message as its last recorded step left it (kept only at log level trace)."""
    for run in reversed(entry.runs):
        for step in reversed(run.steps):
            if step.content is not None:
                headers = "\n".join(f"{n}: {v}" for n, v in step.content.headers)
                text = f"{headers}\n\n{step.content.body}"
                return text[:_CONTENT_LIMIT]
    return ""


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One cycle's reading, nothing stored yet: the ``(rule, event)`` pairs that match, and
    what the cycle moves on (the MPL watermark, the messages watched until they end, when
    each condition was first seen). The notifier stores it with its alerts in one
    transaction (:meth:`~flowrt.notify.store.NotifyStore.claim`), then :meth:`Evaluator.adopt`
    takes it: a sender that dies in between leaves it all to be read again."""

    matched: list[tuple[Rule, Event]]
    marks: dict[str, str]
    watched: frozenset[str]
    watch: frozenset[str]
    unwatch: frozenset[str]
    first_seen: dict[str, float]
    recent: dict[str, int] = dataclasses.field(default_factory=dict)


class Evaluator:
    """Reads the sources and returns the ``(rule, event)`` pairs that match; the claim of
    each pair (``rule|event key``, alerted once) is the notifier's, with its attempts."""

    def __init__(
        self,
        tenant: Tenant,
        security: TenantSecurity,
        log: NotifyLog,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.tenant = tenant
        self.security = security
        self.log = log
        self.clock = clock
        self._mpl: MplBackend | None = None
        self._state: StateBackend | None = None
        self._watched: set[str] = set()  # as stored in the notification log
        self._unfinished: set[str] = set()  # unfinished in the MPL when it was opened
        self._first_seen: dict[str, float] = _load_first_seen(log.mark(_FIRST_SEEN))
        self._cycle_first_seen: dict[str, float] = {}
        # final entries above the watermark, already evaluated (read again until settled)
        self._recent: dict[str, int] = {}
        self._cycle_recent: dict[str, int] = {}
        self._next_expiry_check = 0.0  # at start

    def close(self) -> None:
        if self._mpl is not None:
            self._mpl.close()
        if self._state is not None:
            self._state.close()

    def prime(self) -> None:
        """Set the MPL watermark now if this tenant never had one, so that what is logged
        from here on (``run --once`` polls after this) counts as new, not as history."""
        self._mpl_store()

    def evaluate(self, config: NotifyConfig) -> Evaluation:
        now = self.clock()
        self._cycle_first_seen = dict(self._first_seen)
        self._cycle_recent = dict(self._recent)
        events: list[Event] = []
        triggers = {r.trigger for r in config.rules}
        messages, marks, watched = self._messages()  # always: the watermark follows the log
        events += messages
        if "flow-error" in triggers:
            events += self._flows_in_error(now)
        if triggers & {"poller-failing", "lock-stuck"}:
            events += self._state_events(now)
        if "keystore-expiry" in triggers and now >= self._next_expiry_check:
            self._next_expiry_check = now + EXPIRY_EVERY
            events += self._expiring(config.rules, now)
        matched = [
            (rule, event)
            for event in events
            for rule in config.rules
            if self._matches(rule, event, now)
        ]
        first_seen = self._cycle_first_seen
        if first_seen != self._first_seen:
            marks[_FIRST_SEEN] = json.dumps(first_seen, sort_keys=True)
        return Evaluation(
            matched=matched,
            marks=marks,
            watched=frozenset(watched),
            watch=frozenset(watched - self._watched),
            unwatch=frozenset(self._watched - watched),
            first_seen=first_seen,
            recent=self._cycle_recent,
        )

    def adopt(self, evaluation: Evaluation) -> None:
        """Go on from ``evaluation``, once it is stored."""
        self._watched = set(evaluation.watched)
        self._unfinished = set()
        self._first_seen = dict(evaluation.first_seen)
        self._recent = dict(evaluation.recent)

    @staticmethod
    def _matches(rule: Rule, event: Event, now: float) -> bool:
        if rule.trigger != event.trigger:
            return False
        if event.flow and not rule.matches_flow(event.flow):
            return False
        if rule.duration is None:
            return True
        # conditions carry how long they have lasted (or, for expiry, how long is left)
        lasted = float(event.key.rsplit("|", 1)[-1]) if "|" in event.key else 0.0
        if event.trigger == "keystore-expiry":
            return lasted - now <= rule.duration
        return now - lasted >= rule.duration

    # ------------------------------------------------------------------ messages

    def _mpl_store(self) -> MplBackend | None:
        if self._mpl is None:
            self._mpl = open_mpl(self.tenant, create=False)
            if self._mpl is None:
                if self.log.mark(_WATERMARK) is None:  # a log written from now on is all new
                    self.log.set_mark(_WATERMARK, "0")
                return None
            mark = self.log.mark(_WATERMARK)
            if mark is None:  # first start: what is already in the log is history
                self.log.set_mark(_WATERMARK, str(self._mpl.last_row_id()))
            # what the sender before this one (this process earlier, or another node) saw
            # unfinished, and what is unfinished now
            self._watched = self.log.watched()
            self._unfinished = {s.message_id for s in self._mpl.unfinished()}
        return self._mpl

    def _messages(self) -> tuple[list[Event], dict[str, str], set[str]]:
        """The events of messages that ended, the watermark to store, the messages to
        watch from now on.

        The watermark moves only as far as the MPL is settled (:meth:`settled_row_id`):
        on PostgreSQL several nodes write at once, and a row can become visible after a
        row with a higher ID, so the rows above it are read again next cycle (what they
        alerted is remembered in :attr:`_recent`, and claimed once anyway)."""
        store = self._mpl_store()
        watched = self._watched | self._unfinished
        recent = dict(self._recent)
        if store is None:
            return [], {}, watched
        seen = int(self.log.mark(_WATERMARK) or 0)
        settled = store.settled_row_id(seen)  # before the reads: rows up to it are all in
        ended: list[str] = []
        if watched:
            summaries = store.summaries(watched)
            for message_id in sorted(watched):
                summary = summaries.get(message_id)
                if summary is None:  # purged before it ended: nothing to wait for
                    watched.discard(message_id)
                elif summary.status.is_final:
                    watched.discard(message_id)
                    if summary.status in ALERTED_STATUSES:
                        ended.append(message_id)
        last = seen
        while True:
            rows = store.rows_after(last, limit=1000)
            for row_id, summary in rows:
                last = row_id
                if not summary.status.is_final:
                    watched.add(summary.message_id)
                elif summary.message_id in recent:
                    continue
                elif summary.status in ALERTED_STATUSES and not summary.simulation:
                    ended.append(summary.message_id)
                if summary.status.is_final:
                    recent[summary.message_id] = row_id
            if len(rows) < 1000:
                break
        watermark = max(seen, min(settled, last))
        events = []
        for message_id in dict.fromkeys(ended):
            entry = store.find(message_id)
            if entry is None:
                continue
            events.append(message_event(entry))
            if entry.status is MplStatus.ESCALATED and "dead-letter" in entry.custom_properties:
                events.append(dead_letter_event(entry))
        events += [dead_letter_event(e) for e in dead_letters_since(store, seen)]
        marks = {_WATERMARK: str(watermark)} if watermark != seen else {}
        self._cycle_recent = {m: r for m, r in recent.items() if r > watermark}
        return events, marks, watched

    # ------------------------------------------------------------------ conditions

    def _since(self, key: str, now: float, known: float | None = None) -> float:
        """When a condition began: as recorded, or when it was first seen (by this sender
        or the one before it: kept with the notification log)."""
        first = self._cycle_first_seen.setdefault(key, now)
        return known if known is not None else first

    def _flow_reports(self) -> list[FlowStatus]:
        """What the runtime reports of each flow: its status file, or on a shared store
        each running node's report in the node registry."""
        if not is_shared(self.tenant):
            status = read_status(self.tenant)
            return [] if status is None else list(status.flows.values())
        from flowrt.store.pg.state import NODE_TTL, PgStateDB

        state = self._state_store()
        if not isinstance(state, PgStateDB):
            return []
        now = state.now()
        found: dict[tuple[str, int], FlowStatus] = {}
        for node in state.nodes():
            if not node.alive(now, NODE_TTL):
                continue
            for data in node.status.get("flows", {}).values():
                try:
                    flow = FlowStatus(**data)
                except TypeError:  # a report of another flowrt version
                    continue
                found.setdefault((flow.name, flow.version), flow)
        return list(found.values())

    def _flows_in_error(self, now: float) -> list[Event]:
        current = set()
        events = []
        for flow in self._flow_reports():
            if flow.state != ERROR:
                continue
            key = f"flow-error:{flow.name}:{flow.version}"
            current.add(key)
            since = self._since(key, now)
            events.append(
                Event(
                    trigger="flow-error",
                    key=f"{key}|{since}",
                    flow=flow.name,
                    title=f"flow {flow.name} in ERROR",
                    what=f"Flow {flow.name} (version {flow.version}) has been in ERROR since "
                    f"{iso(since)} ({_ago(now - since)}).",
                    summary=flow.reason or flow.last_error,
                    hint=f"see `flowrt status {flow.name}`",
                )
            )
        self._forget("flow-error:", current)
        return events

    def _state_store(self) -> StateBackend | None:
        if self._state is None:
            self._state = open_state(self.tenant, create=False)
        return self._state

    def _state_events(self, now: float) -> list[Event]:
        state = self._state_store()
        if state is None:
            return []
        events = []
        failing = set()
        for health in state.health():
            if not health.consecutive_failures:
                continue
            key = f"poller:{health.poller}"
            failing.add(key)
            since = self._since(key, now, health.last_success)
            flow = health.poller.rsplit(":", 1)[0]
            events.append(
                Event(
                    trigger="poller-failing",
                    key=f"{key}|{since}",
                    flow=flow,
                    title=f"poller {health.poller} failing",
                    what=f"Poller {health.poller} ({health.mailbox}) has failed "
                    f"{health.consecutive_failures} poll(s) in a row; last success "
                    f"{iso(health.last_success) if health.last_success else 'never'}.",
                    summary=health.last_error,
                    hint=f"see `flowrt status {flow}` and `flowrt mpl list --flow {flow}`",
                )
            )
        self._forget("poller:", failing)
        for lock in state.locks():
            events.append(
                Event(
                    trigger="lock-stuck",
                    key=f"lock:{lock.key}:{lock.acquired}|{lock.renewed}",
                    flow="",
                    title=f"mailbox lock {lock.key} stuck",
                    what=f"The lock on {lock.key}, held by {lock.describe()} since "
                    f"{iso(lock.acquired)}, was last renewed {iso(lock.renewed)} "
                    f"({_ago(now - lock.renewed)} ago).",
                    hint=f"if that runtime is gone, run `flowrt locks release {lock.key}`",
                )
            )
        return events

    def _forget(self, prefix: str, current: set[str]) -> None:
        first_seen = self._cycle_first_seen
        for key in [k for k in first_seen if k.startswith(prefix) and k not in current]:
            del first_seen[key]

    def _expiring(self, rules: Iterable[Rule], now: float) -> list[Event]:
        events = []
        for entry in self.security.keystore():
            until = valid_until(entry).timestamp()
            left = until - now
            state = "expired" if left <= 0 else f"expires in {_ago(left)}"
            events.append(
                Event(
                    trigger="keystore-expiry",
                    key=f"keystore:{entry.alias}|{until}",
                    flow="",
                    title=f"keystore entry {entry.alias} {state}",
                    what=f"Keystore entry {entry.alias} "
                    f"({entry.certificate.subject.rfc4514_string()}) is valid until "
                    f"{iso(until)}: it {state}.",
                    hint=f"renew it and replace it with `flowrt keystore add {entry.alias} FILE "
                    "--replace` (see `flowrt keystore check --within 30d`)",
                )
            )
        return events


def dead_letter_event(entry: MplEntry) -> Event:
    event = message_event(entry)
    return dataclasses.replace(
        event,
        trigger="dead-letter",
        key=f"dead-letter:{entry.message_id}",
        title=f"dead letter in flow {entry.flow}: {event.summary}".rstrip(": "),
    )


def _load_first_seen(text: str | None) -> dict[str, float]:
    try:
        data = json.loads(text or "{}")
        return {str(k): float(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError):  # damaged: conditions count from now
        return {}
