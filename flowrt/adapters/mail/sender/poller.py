"""The mail sender: polls an IMAP folder or a POP3 maildrop and hands each mail, as an
exchange, to ``handle``; the runtime wires ``handle`` to the engine.

    poller = MailPoller(sender, endpoint, handle, state)
    result = await poller.poll_once()       # one poll; raises the chain when it fails
    await poller.session(stop)              # idle: one held IDLE session
    poller.health                           # last success, last error, consecutive failures
    await poller.aclose()                   # log out the connection kept between polls

When it polls (``poll every`` / ``daily at`` / ``idle``, backoff after failures) is the
runtime's job (:func:`flowrt.runtime.schedule.run_on_schedule`); the state store, with its
leases, is injected (:class:`flowrt.source_state.SourceState`).

The rules it keeps (design: "at-least-once without loss, and no duplicates"):

1. The mailbox is changed (mark read, delete, move) only after the flow has finished with a
   mail: ``handle`` returned True (or a true :class:`Verdict`). A mail whose handling failed
   (false, or it raised, or it is not a mail at all) stays as it was and is handed over again
   when its verdict's ``retry_at`` has come (the next poll, or later; a held IDLE session
   wakes up for it); its attempts are counted in the state DB and given to the flow as
   ``mail.attempt``. When the verdict says the attempts are over, the mail goes to its
   dead-letter place (keyword ``$flowrt-dead``, a folder, deleted, kept) and is recorded done.
   A mail that is no mail is handed to ``handle.refused``, when the handler has it.
2. Right after ``handle`` returned True, and before the mailbox is changed, an idempotency
   record (UIDVALIDITY+UID, or UIDL; the Message-ID as a fallback across UIDVALIDITY
   changes) is committed. A crash between the two leaves a record for an unchanged mail:
   the next poll does not hand it over again, it only post-processes it.
3. One broken mail never blocks the others; ``max-messages`` counts mails handed over.
4. One poller per mailbox: a lease (user + host + folder) from the state store, held (and
   renewed) while the poll or the IDLE session runs and released at its end. A second
   poller skips and says who holds the lock; a lease that is not renewed expires, so a
   dead runtime does not block the mailbox for good (`flowrt locks release` ends it now).
   With ``workers N`` a poller has a :class:`Partition`: only the mails whose UID is its
   own, under a lease of its own (the lock key ends in ``#k/N``).
5. Mails are claimed on the IMAP server (CONDSTORE) before they are handed over, so that
   pollers with other state stores (another tenant) cannot take them too; see
   :meth:`ImapMailbox.claim`. Where that is impossible, the poller warns (``warning``).
6. Every wait is bounded; a poll or IDLE session that fails (server restarted, half-open
   connection) raises, and the schedule retries it with backoff.
7. ``in-flight N`` mails are handed over at once (:class:`InFlight`): the next are fetched
   while earlier ones run, and a slow flow holds the fetching back. Their endings are written
   together (:class:`GroupCommit`: MPL flush, then the records, with no other work between);
   the mailbox changes for all of them after the fetches, as before. A stopping runtime or a
   lost lease starts no more mails; those started finish. ``in-flight 1``: mailbox order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import structlog

from flowrt import metrics
from flowrt.adapters.mail.mime.read import mail_to_exchange
from flowrt.adapters.mail.model import Poll, Sender
from flowrt.adapters.mail.sender.commit import GroupCommit
from flowrt.adapters.mail.sender.endpoint import MailEndpoint
from flowrt.adapters.mail.sender.errors import mailbox_locked
from flowrt.adapters.mail.sender.inflight import InFlight
from flowrt.adapters.mail.sender.keeper import KeptConnection
from flowrt.adapters.mail.sender.mailbox import Candidate, Mailbox, content_key, message_id_of
from flowrt.engine.exchange import Exchange
from flowrt.errors import FlowrtError, find_hint, library_cause, render_chain, summary
from flowrt.poll_failures import from_exception
from flowrt.source_state import (
    SOURCE_DELIVERED,
    SOURCE_KEY,
    SOURCE_RAW,
    SOURCE_SCOPE,
    UNREADABLE,
    Fence,
    Lease,
    LeaseBusy,
    LeaseLost,
    LockInfo,
    Partition,
    PollerHealth,
    SourceState,
    Verdict,
    default_owner,
)

__all__ = ["Handle", "MailPoller", "PollResult"]

Handle = Callable[[Exchange], Awaitable[bool | Verdict]]
"""True: the flow finished with the mail (completed, or filtered out); False: it failed. A
:class:`Verdict` also says when to try again and whether the attempts are over."""

MailboxOpener = Callable[[], Awaitable[Mailbox]]

IDLE_REFRESH = 25 * 60.0  # servers may drop an IDLE after 30 minutes (RFC 2177)
LOCK_TTL = 120.0
RECORD_RETENTION = 30 * 86400.0  # records of mails that left the mailbox's selection
PURGE_EVERY = 86400.0
# a poll that changed nothing but the poll times is saved at most this often (and when the
# poller closes): a thousand flows polling each minute wrote a row each poll for no reader.
# The status view has the times at once; the saved ones serve `run --once --due` and a restart
HEALTH_SAVE_GAP = 300.0

_log = structlog.get_logger("flowrt.sender")


@dataclasses.dataclass
class PollResult:
    handled: int = 0  # handed over, and the flow finished with them
    failed: int = 0  # handed over (or unreadable), and the flow failed: left in the mailbox
    skipped: int = 0  # done before (an idempotency record): not handed over again
    recovered: int = 0  # done before, but the mailbox was not changed yet: changed now
    post_processed: int = 0  # mails whose mailbox change this poll confirmed
    more: bool = False  # max-messages left candidates for the next poll
    busy: str = ""  # the poll did not run: another poller holds the mailbox's lock
    lock_lost: bool = False  # our lease was taken away during the poll: it stopped early
    waiting: int = 0  # failed before, not handed over: their next attempt is not due yet
    dead_lettered: int = 0  # attempts over: put in their dead-letter place
    claimed_elsewhere: int = 0  # another runtime (another state store) claimed them first


@dataclasses.dataclass(frozen=True)
class _Fetched:
    """A fetched mail as the state store knows it (see MailPoller._fetched)."""

    message_id: str
    done_elsewhere: bool  # done under another generation (UIDVALIDITY) of the mailbox
    delivered: bool  # may have recipients' rows (False: surely none)
    looked_up: float  # time.monotonic() of the answers


# How long what a batch's lookup said holds for its mails: a third of the shortest lease
# (1 s). The lookup ran under a lease renewed at most a third of its time before, so for this
# long no other node can have taken the mailbox over (and sent or recorded its mails).
FRESH_FOR = 0.3
LOOKUP_EVERY = 32  # mails of a fetched batch looked up together (a batch holds up to 250)


@dataclasses.dataclass
class _Dead:
    candidate: Candidate
    verdict: Verdict
    message_id: str


class _RecordFailed(Exception):
    def __init__(self, error: FlowrtError) -> None:
        super().__init__(str(error))
        self.error = error


class MailPoller:
    """Polls one mailbox for one flow; see the module docstring for the rules."""

    def __init__(
        self,
        sender: Sender,
        endpoint: MailEndpoint,
        handle: Handle,
        state: SourceState,
        *,
        name: str | None = None,
        owner: str | None = None,
        lock_ttl: float = LOCK_TTL,
        idle_refresh: float = IDLE_REFRESH,
        opener: MailboxOpener | None = None,
        flow: str = "",
        partition: Partition | None = None,
    ) -> None:
        self.sender = sender
        self.endpoint = endpoint
        self.handle = handle
        self.state = state
        self.partition = partition  # workers N: this process's share of the mailbox
        folder = sender.folder if sender.protocol == "imap" else "INBOX"
        mailbox = f"{endpoint.login.user}@{endpoint.host}/{folder}"
        part = f"#{partition.describe()}" if partition else ""  # each worker its own lease
        self.lock_key = mailbox + part
        self.name = (name or f"{sender.protocol}:{mailbox}") + part
        self.owner = owner or default_owner()
        self.lock_ttl = lock_ttl
        self.idle_refresh = idle_refresh
        self.flow = flow  # names the poll-failure log's entries
        self.last_hint = ""  # the hint of the last failed or skipped poll
        self._opener = opener or self._open_mailbox
        self._health = self._saved_health()
        self._saved = _without_times(self._health) if self._health.last_poll else None
        self._saved_poll = self._health.last_poll
        self.health_changes = 0  # counts the changes of `health`: a reader sees it moved
        # called when more than the poll times changed (a failure, a recovery, a skip)
        self.on_health: Callable[[], None] | None = None
        self._lost = asyncio.Event()  # our lease was taken away: stop at once (set by a lease)
        self._fence: Fence | None = None  # the lease held now: every state write names it
        self._purged = 0.0
        self._flight: InFlight | None = None  # the running poll's mails
        self._commits = GroupCommit(
            lambda: getattr(self.handle, "durable", None),
            getattr(state, "batch", None),
            due=self._group_due,
        )
        self._log = _log.bind(poller=self.name)
        # between polls: see keeper.py (an IDLE session holds its own connection)
        self._kept = KeptConnection(self._opener, keep=_keep_seconds(sender), log=self._log)
        self.warning = ""  # e.g. the mailbox cannot be claimed against other runtimes

    def _group_due(self, waiting: int) -> bool:
        """The mails' records are written together when every mail of the poll waits for
        its record, or a window's worth does (a slow mail does not hold back the others)."""
        flight = self._flight
        return flight is None or waiting >= min(flight.running, flight.limit)

    @property
    def schedule(self) -> Poll:
        return self.sender.poll

    @property
    def health(self) -> PollerHealth:
        return dataclasses.replace(self._health)

    def _saved_health(self) -> PollerHealth:
        # a restarted runtime goes on counting where it stopped (failures in a row, totals)
        try:
            saved = self.state.health(self.name)
        except FlowrtError:
            saved = []
        if saved:
            return dataclasses.replace(saved[0], mailbox=self.lock_key)
        return PollerHealth(self.name, mailbox=self.lock_key)

    # ------------------------------------------------------------------ one poll

    async def poll_once(self) -> PollResult:
        """Connect, take the lock, process up to max-messages mails, post-process, close.

        Returns a result with ``busy`` set (and does nothing) when another poller holds the
        lock; raises the MessagingException chain when the poll fails.
        """
        try:
            async with self._lease():
                mailbox = await self._kept.open()
                try:
                    result = await self._poll(mailbox)
                except BaseException:
                    mailbox.abort()
                    raise
                await self._kept.give_back(mailbox, keep=not result.lock_lost)
        except LeaseBusy as busy:
            await self._kept.aclose()  # another node polls this mailbox now
            return self._skipped(busy.holder)
        except Exception as exc:
            self._failed(exc)
            raise
        self._succeeded(result)
        return result

    async def aclose(self) -> None:
        """Log out the connection kept between polls (stop, undeploy); save the poll times
        not saved yet."""
        if self._health.last_poll != self._saved_poll:
            self._write_health()
        await self._kept.aclose()

    async def _open_mailbox(self) -> Mailbox:
        if self.sender.protocol == "pop3":
            from flowrt.adapters.mail.pop3.mailbox import Pop3Mailbox

            return await Pop3Mailbox.open(self.endpoint, post_process=self.sender.post_process)
        from flowrt.adapters.mail.imap.mailbox import ImapMailbox

        return await ImapMailbox.open(
            self.endpoint,
            folder=self.sender.folder,
            selection=self.sender.selection,
            post_process=self.sender.post_process,
            claim_owner=self.state.claim_id if self.sender.claim else "",
            partition=self.partition,
        )

    async def _poll(self, mailbox: Mailbox) -> PollResult:
        result = PollResult()
        await self._take_replays(mailbox)
        candidates = await mailbox.candidates()
        records = self.state.records(mailbox.scope, [c.key for c in candidates if c.key])
        if mailbox.complete_listing:
            self._forget_gone(mailbox, {c.key for c in candidates})
        finish: list[Candidate] = []
        todo: list[Candidate] = []
        attempts: dict[str, int] = {}
        now = time.time()
        for candidate in candidates:
            record = records.get(candidate.key)
            if record is not None and not record.done and record.next_attempt > now:
                result.waiting += 1  # failed before; its backoff is not over yet
                continue
            if record is None or not record.done:
                todo.append(candidate)
                attempts[candidate.key] = record.attempts if record else 0
            elif not record.post_processed:
                finish.append(candidate)  # crashed between "done" and the mailbox change
                result.recovered += 1
            else:
                result.skipped += 1  # kept mail (post-process keep), already done
        result.more = len(todo) > self.sender.max_messages
        todo = todo[: self.sender.max_messages]
        todo = await self._claim(mailbox, todo, result)
        errors: list[FlowrtError] = []
        dead: list[_Dead] = []
        flight = self._flight = InFlight(self.sender.in_flight, on_end=self._commits.poke)

        async def one(candidate: Candidate, raw: bytes, mail: _Fetched) -> None:
            try:
                if await self._process(mailbox, candidate, raw, mail, attempts, result, dead):
                    finish.append(candidate)
            except _RecordFailed as failed:  # see _process
                finish.append(candidate)
                errors.append(failed.error)

        try:
            async with contextlib.aclosing(mailbox.batches(todo)) as batches:
                async for batch in batches:
                    for candidate, raw, mail in self._looked_up(mailbox, batch):
                        await flight.slot()  # backpressure: a slow flow holds back the fetching
                        if self._lost.is_set() or self._stopping():
                            flight.release()
                            break
                        flight.spawn(one(candidate, raw, mail))
                    if self._lost.is_set():
                        result.lock_lost = True
                        self._log.warning(
                            "lease lost during the poll; stopping", lock=self.lock_key
                        )
                        break
                    if self._stopping():  # the mails not started stay as they are
                        break
        except asyncio.CancelledError:
            await flight.cancel()
            raise
        except BaseException:
            await flight.drain()  # the started mails end before the poll fails
            raise
        await flight.drain()
        if self._lost.is_set() and not result.lock_lost:  # lost while the last mails ran
            result.lock_lost = True
            self._log.warning("lease lost during the poll", lock=self.lock_key)
        state_error = errors[0] if errors else None
        if (finish or dead) and self._fence is not None:
            # the mailbox is changed outside any transaction: make sure, right before, that
            # no other node took the mailbox while this one was busy (or paused)
            try:
                self.state.check_fence(self._fence)
            except LeaseLost:
                self._lease_lost(result)
                finish, dead = [], []
        # after the fetches: one command at a time on the connection
        for item in dead:
            await self._dead_letter(mailbox, item, result)
        await mailbox.finish(finish)
        if getattr(mailbox, "can_claim", False):
            await mailbox.release_claims()
        if finish:
            try:
                self.state.mark_post_processed(
                    mailbox.scope, [c.key for c in finish if c.key], fence=self._fence
                )
            except LeaseLost:  # taken over after the check: the records say "done" anyway
                self._lease_lost(result)
            result.post_processed = len(finish)
        if state_error is not None:
            raise state_error
        self._purge_now_and_then(mailbox.scope)
        # "more" asks for the next poll at once: only when this one got on with the mail
        # (mail claimed elsewhere, or a stop, would otherwise be polled for in a loop)
        result.more = (
            result.more
            and bool(result.handled or result.failed)
            and not (result.lock_lost or self._stopping())
        )
        return result

    def _stopping(self) -> bool:
        """The runtime is stopping: mails not started yet are handed back untouched."""
        return bool(getattr(self.handle, "stopping", False))

    def _lease_lost(self, result: PollResult) -> None:
        self._lost.set()
        result.lock_lost = True
        self._log.warning(
            "lease taken over by another node; leaving the mailbox to it", lock=self.lock_key
        )

    def _purge_now_and_then(self, scope: str) -> None:
        # once a day: records of mails that were marked, moved or deleted long ago (records
        # of kept mails stay: they are what keeps those mails from being handed over again)
        now = time.time()
        if now - self._purged < PURGE_EVERY:
            return
        self._purged = now
        try:
            self.state.purge_records(now - RECORD_RETENTION, mailbox=scope)
        except FlowrtError as exc:
            self._log.warning("could not purge old mail records", error=summary(exc))

    async def _claim(
        self, mailbox: Mailbox, todo: list[Candidate], result: PollResult
    ) -> list[Candidate]:
        """Only mails this runtime claims on the server are handed over: the lease keeps
        pollers of one state store apart, the claim also those of other stores."""
        if not self.sender.claim:
            return todo
        if not getattr(mailbox, "can_claim", False):  # (a mailbox that predates claiming)
            if not self.warning:
                self.warning = (
                    f"{self.sender.protocol.upper()} mailbox {self.lock_key} cannot be claimed "
                    "on the server (POP3, or IMAP without CONDSTORE): a runtime of another "
                    "tenant polling it too would send its mails again"
                )
                self._log.warning("mailbox cannot be claimed", reason=self.warning)
            return todo
        if not todo:
            return todo
        claimed = await mailbox.claim(todo)
        result.claimed_elsewhere += len(todo) - len(claimed)
        return claimed

    async def _take_replays(self, mailbox: Mailbox) -> None:
        """Dead letters put back (`flowrt deadletter replay`): unmarked, their record
        starting over, so this poll hands them over once more."""
        keys = self.state.replays(mailbox.scope)
        if not keys:
            return
        await mailbox.revive(keys)
        for key in keys:
            self.state.take_replay(mailbox.scope, key)
        self._log.info("dead letters put back for another try", count=len(keys))

    async def _dead_letter(self, mailbox: Mailbox, item: _Dead, result: PollResult) -> None:
        verdict = item.verdict
        place = verdict.dead_letter_place or "default"
        try:
            await mailbox.dead_letter([item.candidate], place, verdict.dead_letter_folder)
        except FlowrtError as exc:
            # the mail stays as it was, to be tried again; the flow records why in the MPL
            self._log.error(
                "dead-letter place failed; mail left in the mailbox",
                key=item.candidate.key,
                error=render_chain(exc),
                hint=find_hint(exc),
            )
            if verdict.dead_letter_failed is not None:
                verdict.dead_letter_failed(exc)
            self.state.record_failure(
                mailbox.scope,
                item.candidate.key,
                error=summary(exc),
                generation=mailbox.generation,
                message_id=item.message_id,
                next_attempt=verdict.retry_at,
            )
            return
        self.state.record_done(
            mailbox.scope,
            item.candidate.key,
            generation=mailbox.generation,
            message_id=item.message_id,
            action=f"dead-letter {place}",
        )
        self.state.mark_post_processed(mailbox.scope, [item.candidate.key])
        result.dead_lettered += 1
        self._log.warning("mail dead-lettered", key=item.candidate.key, place=place)

    def _looked_up(
        self, mailbox: Mailbox, batch: Sequence[tuple[Candidate, bytes]]
    ) -> Iterator[tuple[Candidate, bytes, _Fetched]]:
        """The batch's mails with what the state store knows of them, asked LOOKUP_EVERY
        mails at a time: soon before their turn, so that the answers are rarely too old."""
        for start in range(0, len(batch), LOOKUP_EVERY):
            part = batch[start : start + LOOKUP_EVERY]
            for (candidate, raw), mail in zip(part, self._fetched(mailbox, part), strict=True):
                yield candidate, raw, mail

    def _fetched(
        self, mailbox: Mailbox, batch: Sequence[tuple[Candidate, bytes]]
    ) -> list[_Fetched]:
        """What the state store knows of a fetched batch: two queries for all its mails,
        instead of two per mail."""
        ids = [message_id_of(raw) for _candidate, raw in batch]
        done = self.state.find_by_message_ids(
            mailbox.scope, ids, other_generation_than=mailbox.generation
        )
        delivered = self.state.delivered(mailbox.scope, [c.key for c, _raw in batch if c.key])
        now = time.monotonic()
        return [
            # a key known only from the content (POP3 without UIDL) is looked up per mail
            _Fetched(message_id, message_id in done, not c.key or c.key in delivered, now)
            for (c, _raw), message_id in zip(batch, ids, strict=True)
        ]

    async def _process(
        self,
        mailbox: Mailbox,
        candidate: Candidate,
        raw: bytes,
        mail: _Fetched,
        attempts: dict[str, int],
        result: PollResult,
        dead: list[_Dead],
    ) -> bool:
        """Hand one mail over; True when the mailbox is to be changed for it.

        When the record cannot be written after the flow finished, _RecordFailed says so:
        the mail is post-processed all the same (leaving it would hand it over a second
        time), and the poll then fails with the state DB's error."""
        if time.monotonic() - mail.looked_up > FRESH_FOR:
            # the batch's answers are old (a slow flow ahead of this mail, or the process
            # was paused): another node may have taken the mailbox and sent it since
            [mail] = self._fetched(mailbox, [(candidate, raw)])
        message_id = mail.message_id
        if not candidate.key:  # POP3 without UIDL: known only now
            candidate.key = content_key(raw)
            found = self.state.records(mailbox.scope, [candidate.key]).get(candidate.key)
            if found is not None and found.done:
                if not found.post_processed:
                    result.recovered += 1
                    return True
                result.skipped += 1
                return self.sender.post_process.action != "keep"  # a delete that did not stick
            attempts[candidate.key] = found.attempts if found else 0
        if mail.done_elsewhere:
            # the same mail, done under another UIDVALIDITY: record it under its new key
            self.state.record_done(
                mailbox.scope,
                candidate.key,
                generation=mailbox.generation,
                message_id=message_id,
                action=self.sender.post_process.action,
                fence=self._fence,
            )
            result.recovered += 1
            return True
        attempt = attempts.get(candidate.key, 0) + 1
        verdict = await self._hand_over(mailbox, candidate, raw, attempt, mail.delivered)
        if self._flight is not None:
            self._flight.free()  # the next mail starts while this one waits for its record
        if not verdict:
            result.failed += 1
            if verdict.dead_letter:
                dead.append(_Dead(candidate, verdict, message_id))
                return False
            try:
                count = await self._commits.write(
                    lambda: self.state.record_failure(
                        mailbox.scope,
                        candidate.key,
                        error=verdict.error,
                        generation=mailbox.generation,
                        message_id=message_id,
                        next_attempt=verdict.retry_at,
                        fence=self._fence,
                    )
                )
            except LeaseLost:
                self._lease_lost(result)
                return False
            self._log.warning(
                "mail not processed; left in the mailbox",
                key=candidate.key,
                attempts=count,
                error=verdict.error,
            )
            return False
        result.handled += 1
        try:
            await self._commits.write(
                lambda: self.state.record_done(
                    mailbox.scope,
                    candidate.key,
                    generation=mailbox.generation,
                    message_id=message_id,
                    action=self.sender.post_process.action,
                    fence=self._fence,
                )
            )
        except LeaseLost:
            # another node owns the mailbox now: it decides about this mail (it finds no
            # record and hands the mail over again); this node must not change the mailbox
            self._lease_lost(result)
            return False
        except FlowrtError as exc:
            raise _RecordFailed(exc) from exc
        return True

    async def _hand_over(
        self, mailbox: Mailbox, candidate: Candidate, raw: bytes, attempt: int, delivered: bool
    ) -> Verdict:
        sender = self.sender
        source = {
            **mailbox.properties(candidate),
            "mail.attempt": attempt,
            SOURCE_SCOPE: mailbox.scope,
            SOURCE_KEY: candidate.key,
            SOURCE_RAW: raw,
            SOURCE_DELIVERED: delivered,
        }
        unreadable = ""
        refused: Handle | None = None
        try:
            exchange = mail_to_exchange(
                raw,
                headers=sender.headers,
                attachments=sender.attachments,
                keep_original=sender.keep_original,
            )
        except Exception as exc:  # not a mail at all; a parser bug must not stop the poll
            unreadable = summary(exc)
            refused = getattr(self.handle, "refused", None)
            if refused is None:  # a handler that takes no refusals: counted, left as it is
                return Verdict(False, error=unreadable)
            # handed over as a refusal (``handle.refused``): the flow records it in the MPL
            # and decides (attempts, dead letter) like for any other failure
            exchange = Exchange(
                properties={
                    **source,
                    UNREADABLE: exc,
                    "mail.size": len(raw),
                    "mail.message_id": message_id_of(raw),
                }
            )
        else:
            exchange.properties.update(source)
        try:
            # ``ending``: the MPL entry is made durable by the group commit, before the record
            ending = getattr(self.handle, "ending", None) if refused is None else None
            verdict = await (ending or refused or self.handle)(exchange)
        except Exception as exc:
            return Verdict(False, error=summary(exc))
        if isinstance(verdict, Verdict):
            return verdict
        if unreadable:  # only a Verdict can end an unreadable mail (as a dead letter)
            return Verdict(False, error=unreadable)
        return Verdict(bool(verdict), error="" if verdict else "the flow did not complete")

    def _forget_gone(self, mailbox: Mailbox, present: set[str]) -> None:
        # POP3 lists the whole maildrop: records of mails no longer there are done with
        gone = [key for key in self.state.keys(mailbox.scope) if key not in present]
        if gone:
            self.state.forget(mailbox.scope, gone, fence=self._fence)

    # ------------------------------------------------------------------ IDLE

    async def session(self, stop: asyncio.Event) -> float:
        """One connection, held with the lock: poll, IDLE until mail comes (or the refresh
        interval passes: the next poll doubles as the keepalive), poll again, until ``stop``.
        Raises when the connection fails (the schedule reconnects with backoff); returns the
        seconds to wait before the next session (when another poller holds the lock)."""
        try:
            async with self._lease():
                mailbox = await self._opener()
                try:
                    await self._idle_session(mailbox, stop)
                except BaseException:
                    mailbox.abort()
                    raise
                await mailbox.close()
        except LeaseBusy as busy:
            self._skipped(busy.holder)
            # try again when the holder's lease runs out (a node that died is taken over
            # then), or sooner: the holder may release it
            remaining = busy.holder.expires - time.time()
            return min(self.lock_ttl, max(1.0, min(self.lock_ttl / 4, remaining)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            raise
        return 0.0

    async def _idle_session(self, mailbox: Mailbox, stop: asyncio.Event) -> None:
        wake = asyncio.Event()  # stop, or the lease lost: IDLE must end now, not in minutes
        relays = [asyncio.ensure_future(_relay(event, wake)) for event in (stop, self._lost)]
        try:
            while not wake.is_set():
                mailbox.clear_new_mail()  # an EXISTS from now on means: poll again
                result = await self._poll(mailbox)
                self._succeeded(result)
                if result.more or result.lock_lost or mailbox.new_mail_pending():
                    continue
                await mailbox.wait_for_mail(self._idle_wait(mailbox), wake)
        finally:
            for relay in relays:
                relay.cancel()

    def _idle_wait(self, mailbox: Mailbox) -> float:
        """Until the refresh, or until a failed mail's next attempt is due: a held IDLE
        session must wake up for its retries, not wait for new mail."""
        try:
            due = self.state.next_attempt_due(mailbox.scope)
        except FlowrtError:
            due = None
        if due is None:
            return self.idle_refresh
        return min(self.idle_refresh, max(0.05, due - time.time() + 0.01))

    # ------------------------------------------------------------------ lock

    @contextlib.asynccontextmanager
    async def _lease(self) -> AsyncIterator[Lease]:
        async with self.state.lease(
            self.lock_key, self.owner, self.lock_ttl, info=self.name
        ) as lease:
            self._lost = lease.lost
            self._fence = lease.fence
            yield lease

    # ------------------------------------------------------------------ health

    def _succeeded(self, result: PollResult) -> None:
        h = self._health
        h.last_poll = h.last_success = time.time()
        h.consecutive_failures = 0
        h.handled += result.handled
        h.failed += result.failed
        h.note = "lease lost during the poll" if result.lock_lost else ""
        self._save_health()
        metrics.poll_done(self.name, ok=True)

    def _failed(self, exc: BaseException) -> None:
        h = self._health
        h.last_poll = h.last_error_at = time.time()
        h.last_error = summary(exc)
        h.consecutive_failures += 1
        h.note = ""
        self.last_hint = find_hint(exc) or ""
        self._save_health()
        self._log_failure(exc, h.last_error_at)
        metrics.poll_done(self.name, ok=False)
        self._log.error(
            "poll failed",
            error=render_chain(exc),
            hint=find_hint(exc),
            library_cause=library_cause(exc),
            consecutive_failures=h.consecutive_failures,
        )

    def _skipped(self, holder: LockInfo) -> PollResult:
        until = dt.datetime.fromtimestamp(holder.expires, dt.UTC).isoformat(timespec="seconds")
        reason = (
            f"mailbox {self.lock_key} is being polled by {holder.describe()}; lease until "
            f"{until}; skipping this poll (if that runtime is gone: `flowrt locks release "
            f"{holder.key}`)"
        )
        # not a failure in a row (a standby runtime is normal), but a poll that did not run:
        # shown in status and listed with the poll failures
        locked = mailbox_locked(holder.key, holder.describe(), until)
        h = self._health
        h.note = reason
        h.last_error = summary(locked)
        h.last_error_at = time.time()
        self.last_hint = locked.hint or ""
        self._save_health()
        self._log_failure(locked, h.last_error_at)
        self._log.warning("poll skipped: mailbox locked", reason=reason, hint=locked.hint)
        return PollResult(busy=reason)

    def _log_failure(self, exc: BaseException, at: float) -> None:
        try:
            # both flowrt stores keep the poll-failure log; an injected stand-in may not
            record = getattr(self.state, "record_poll_failure", None)
            if record is not None:
                record(from_exception(self.name, self.flow, at, exc))
        except FlowrtError as error:  # the log is a report; never fail a poll over it
            self._log.warning("could not log the poll failure", error=summary(error))

    def _save_health(self) -> None:
        self.health_changes += 1
        h = self._health
        if self._saved == _without_times(h):
            if (
                h.last_poll is not None
                and self._saved_poll is not None
                and h.last_poll - self._saved_poll < HEALTH_SAVE_GAP
            ):
                return  # only the poll times moved: kept in memory (and in the status view)
            self._write_health()
            return
        self._write_health()
        if self.on_health is not None:
            self.on_health()

    def _write_health(self) -> None:
        try:
            self.state.save_health(self._health)
        except FlowrtError as exc:  # health is a report; never fail a poll over it
            self._log.warning("could not save the poller health", error=summary(exc))
            return
        self._saved = _without_times(self._health)
        self._saved_poll = self._health.last_poll


def _without_times(health: PollerHealth) -> PollerHealth:
    """What a saved health must show as it is: everything but the times of the polls."""
    # (whether there was a success at all is more than a time: `poller-failing` says "never")
    success = None if health.last_success is None else 0.0
    return dataclasses.replace(health, last_poll=None, last_success=success)


def _keep_seconds(sender: Sender) -> float:
    """How long a connection is kept after a poll: only when the next poll comes within
    ``keep-connection`` (a ``poll every`` flow; daily and cron polls are far apart)."""
    keep = sender.keep_connection
    poll = sender.poll
    if keep is None or poll.kind != "every" or poll.interval > keep:
        return 0.0
    return keep.total_seconds()


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
