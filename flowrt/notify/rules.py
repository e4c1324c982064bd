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
from collections.abc import Callable, Iterable

from flowrt.errors import summary_of_levels
from flowrt.mpl.model import MplEntry, MplStatus
from flowrt.notify.config import NotifyConfig, Rule
from flowrt.notify.store import NotifyStore, iso
from flowrt.runtime.status import ERROR, read_status
from flowrt.security import TenantSecurity
from flowrt.security.keystore import valid_until
from flowrt.store import MplBackend, StateBackend, open_mpl, open_state
from flowrt.tenant import Tenant

__all__ = ["Evaluator", "Event", "dead_letters_since", "iso", "message_event"]

ALERTED_STATUSES = (MplStatus.FAILED, MplStatus.ESCALATED)
EXPIRY_EVERY = 86400.0
_WATERMARK = "mpl_row"
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


class Evaluator:
    """Reads the sources and returns ``(rule, event)`` pairs not alerted before."""

    def __init__(
        self,
        tenant: Tenant,
        security: TenantSecurity,
        log: NotifyStore,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.tenant = tenant
        self.security = security
        self.log = log
        self.clock = clock
        self._mpl: MplBackend | None = None
        self._state: StateBackend | None = None
        self._watched: set[str] = set()
        self._first_seen: dict[str, float] = {}
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

    def evaluate(self, config: NotifyConfig) -> list[tuple[Rule, Event]]:
        now = self.clock()
        events: list[Event] = []
        triggers = {r.trigger for r in config.rules}
        events += self._messages()  # always, so the watermark follows the log
        if "flow-error" in triggers:
            events += self._flows_in_error(now)
        if triggers & {"poller-failing", "lock-stuck"}:
            events += self._state_events(now)
        if "keystore-expiry" in triggers and now >= self._next_expiry_check:
            self._next_expiry_check = now + EXPIRY_EVERY
            events += self._expiring(config.rules, now)
        matched: list[tuple[Rule, Event]] = []
        for event in events:
            for rule in config.rules:
                if not self._matches(rule, event, now):
                    continue
                if self.log.first_time(f"{rule.name}|{event.key}", now=now):
                    matched.append((rule, event))
        return matched

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
            self._watched = {s.message_id for s in self._mpl.unfinished()}
        return self._mpl

    def _messages(self) -> list[Event]:
        store = self._mpl_store()
        if store is None:
            return []
        seen = watermark = int(self.log.mark(_WATERMARK) or 0)
        ended: list[str] = []
        if self._watched:
            for message_id, summary in store.summaries(self._watched).items():
                if summary.status.is_final:
                    self._watched.discard(message_id)
                    if summary.status in ALERTED_STATUSES:
                        ended.append(message_id)
        while True:
            rows = store.rows_after(watermark, limit=1000)
            for row_id, summary in rows:
                watermark = row_id
                if not summary.status.is_final:
                    self._watched.add(summary.message_id)
                elif summary.status in ALERTED_STATUSES and not summary.simulation:
                    ended.append(summary.message_id)
            if len(rows) < 1000:
                break
        if watermark != seen:
            self.log.set_mark(_WATERMARK, str(watermark))
        events = []
        for message_id in dict.fromkeys(ended):
            entry = store.find(message_id)
            if entry is not None:
                events.append(message_event(entry))
        events += [dead_letter_event(e) for e in dead_letters_since(store, watermark)]
        return events

    # ------------------------------------------------------------------ conditions

    def _since(self, key: str, now: float, known: float | None = None) -> float:
        """When a condition began: as recorded, or when it was first seen here."""
        first = self._first_seen.setdefault(key, now)
        return known if known is not None else first

    def _flows_in_error(self, now: float) -> list[Event]:
        status = read_status(self.tenant)
        if status is None:
            return []
        current = set()
        events = []
        for flow in status.flows.values():
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

    def _state_events(self, now: float) -> list[Event]:
        if self._state is None:
            self._state = open_state(self.tenant, create=False)
            if self._state is None:
                return []
        events = []
        failing = set()
        for health in self._state.health():
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
        for lock in self._state.locks():
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
        for key in [k for k in self._first_seen if k.startswith(prefix) and k not in current]:
            del self._first_seen[key]

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
