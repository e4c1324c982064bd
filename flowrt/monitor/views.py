"""What the monitor shows, read from the tenant: MPL pages and entries, the flows with their
status and locks, the keystore, and readiness. The pages and the JSON API both use this, and
the JSON forms are those of the CLI (``mpl list/show``, ``status``, ``keystore list``).

Every method blocks (SQLite, files); the app calls them in a worker thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flowrt.errors import FlowrtError, MplError
from flowrt.mpl._time import parse_instant
from flowrt.mpl.model import MplEntry, MplStatus, MplSummary
from flowrt.mpl.store import DEFAULT_LIMIT
from flowrt.notify.store import Attempt, open_log
from flowrt.runtime.report import StatusReport, status_report
from flowrt.runtime.status import STARTED
from flowrt.security.expiry import entry_row
from flowrt.security.keystore import Keystore, valid_until
from flowrt.store import MplBackend, is_shared, open_mpl
from flowrt.tenant import Tenant

__all__ = ["MAX_LIMIT", "MessageQuery", "QueryError", "TenantViews"]

MAX_LIMIT = 500
NOTIFY_STATUSES = ("pending", "sent", "held", "failed", "gave-up")


class QueryError(ValueError):
    """A filter in the URL that cannot be used; the text names the parameter."""


@dataclasses.dataclass(frozen=True)
class MessageQuery:
    """The filters of ``flowrt mpl list``, plus ``text`` and a page cursor, from a URL."""

    flow: str | None = None
    status: MplStatus | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    message_id: str | None = None
    properties: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    after: str | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_params(cls, params: Mapping[str, Sequence[str]]) -> MessageQuery:
        """From query parameters ``status flow since until id property text after limit``;
        empty values are no filter (a form sends every field)."""

        def one(name: str) -> str | None:
            values = [v for v in params.get(name, ()) if v.strip()]
            if len(values) > 1:
                raise QueryError(f"{name}: give it once, not {len(values)} times")
            return values[0].strip() if values else None

        status = one("status")
        if status is not None:
            try:
                status_value: MplStatus | None = MplStatus(status.upper())
            except ValueError:
                known = ", ".join(s.value for s in MplStatus)
                raise QueryError(f"status: {status!r} is not one of {known}") from None
        else:
            status_value = None
        since, until = _instant(one("since"), "since"), _instant(one("until"), "until")
        if since is not None and until is not None and since > until:
            raise QueryError("since: it is after until")
        props = []
        for value in params.get("property", ()):
            if not value.strip():
                continue
            name, sep, prop_value = value.partition("=")
            if not sep or not name.strip():
                raise QueryError(f"property: {value!r} is not NAME=VALUE")
            props.append((name.strip(), prop_value))
        limit_text = one("limit")
        limit = DEFAULT_LIMIT
        if limit_text is not None:
            try:
                limit = int(limit_text)
            except ValueError:
                raise QueryError(f"limit: {limit_text!r} is not a number") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise QueryError(f"limit: {limit} is not between 1 and {MAX_LIMIT}")
        return cls(
            flow=one("flow"),
            status=status_value,
            since=since,
            until=until,
            message_id=one("id"),
            properties=tuple(props),
            text=one("text"),
            after=one("after"),
            limit=limit,
        )


def _instant(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise QueryError(f"{name}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class FlowView:
    """A row of the flows page: the status report's row, the flow's last failure (with its
    hint) from the MPL and the locks it holds."""

    row: dict[str, Any]
    last_failure: MplEntry | None
    locks: list[dict[str, str]]


class TenantViews:
    """Reads for one tenant. ``live_states`` gives the running runtime's flow states when the
    monitor runs inside it (fresher than the status file it writes each second)."""

    def __init__(
        self, tenant: Tenant, *, live_states: Callable[[], dict[str, str]] | None = None
    ) -> None:
        self.tenant = tenant
        self._live_states = live_states
        self._store: MplBackend | None = None
        self._store_lock = threading.Lock()

    def close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _mpl(self) -> MplBackend | None:
        """The MPL store, opened on first use; None while nothing was recorded (the monitor
        never creates the database: it may look at a copy)."""
        with self._store_lock:
            if self._store is None:
                self._store = open_mpl(self.tenant, create=False)
            return self._store

    # ------------------------------------------------------------------ messages

    def messages(self, query: MessageQuery) -> tuple[list[MplSummary], str | None]:
        store = self._mpl()
        if store is None:
            return [], None
        return store.page(
            flow=query.flow,
            status=query.status,
            since=query.since,
            until=query.until,
            message_id=query.message_id,
            properties=query.properties,
            text=query.text,
            after=query.after,
            limit=query.limit,
        )

    def message(self, message_id: str) -> MplEntry:
        """The entry (a unique prefix of 8+ characters will do); MplError when none."""
        store = self._mpl()
        if store is None:
            raise MplError(f"no MPL entry with message ID {message_id!r}")
        return store.get(message_id)

    def flow_names(self) -> list[str]:
        return [row["flow"] for row in self.status().flows]

    # ------------------------------------------------------------------ flows

    def status(self) -> StatusReport:
        report = status_report(self.tenant)
        # On a shared store the report already comes from every node's heartbeat in the
        # store; this node's own view would hide what the others run.
        if self._live_states is not None and report.nodes is None:
            states = self._live_states()
            for row in report.flows:
                row["state"] = states.get(row["flow"], row["state"])
        return report

    def flows(self) -> tuple[StatusReport, list[FlowView]]:
        report = self.status()
        store = self._mpl()
        views = []
        for row in report.flows:
            last = None
            if store is not None:
                failed = store.list_entries(flow=row["flow"], status=MplStatus.FAILED, limit=1)
                if failed:
                    last = store.find(failed[0].message_id)
            locks = [
                {"key": lock.key, "holder": lock.describe()}
                for lock in report.locks
                if lock.info == row["flow"] or lock.info.startswith(row["flow"] + ":")
            ]
            views.append(FlowView(row=row, last_failure=last, locks=locks))
        return report, views

    # ------------------------------------------------------------------ keystore

    def keystore(self) -> list[dict[str, Any]]:
        """The keystore entries as ``flowrt keystore list --format json`` lists them, with the
        seconds left to the end of validity; SecurityError if it cannot be opened."""
        now = dt.datetime.now(dt.UTC)
        rows = []
        for entry in Keystore.open(self.tenant):
            row = entry_row(entry, now)
            row["expires_in_seconds"] = round((valid_until(entry) - now).total_seconds())
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ notifications

    def notifications(
        self, *, recipient: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Attempt]:
        """The alert attempts, newest first, as ``flowrt notify log`` lists them."""
        if status is not None and status not in NOTIFY_STATUSES:
            raise QueryError(f"status: {status!r} is not one of {', '.join(NOTIFY_STATUSES)}")
        store = open_log(self.tenant, create=False)
        if store is None:
            return []
        with store:
            return store.attempts(recipient=recipient, status=status, limit=limit)

    # ------------------------------------------------------------------ readiness

    def readiness(self) -> list[str]:
        """Why the tenant is not ready (empty when it is): a deployed flow that is not
        STARTED, no running runtime, a store that cannot be written."""
        reasons: list[str] = []
        try:
            report = self.status()
        except FlowrtError as exc:
            return [f"cannot read the runtime status: {exc}"]
        if self._live_states is None and not report.alive:
            reasons.append("no runtime is running on this tenant")
        else:
            for row in report.flows:
                if row["state"] != STARTED:
                    reasons.append(f"flow {row['flow']} is {row['state']}")
        files = (
            ()
            if is_shared(self.tenant)
            else (("MPL", self.tenant.mpl_path), ("state", self.tenant.state_path))
        )
        for what, path in files:
            if path.exists():
                if not os.access(path, os.W_OK):
                    reasons.append(f"the {what} database {path} is not writable")
            elif not os.access(path.parent, os.W_OK):
                reasons.append(f"the {what} database cannot be created in {path.parent}")
        return reasons
