"""An IMAP folder as the poller's :class:`~flowrt.adapters.mail.sender.mailbox.Mailbox`.

Efficiency: one UID SEARCH for the candidates, one UID FETCH (RFC822.SIZE) to plan batches
that bound memory, then UID FETCH (BODY.PEEK[]) per batch, the next batch fetched while the
current one is being processed. BODY.PEEK leaves \\Seen alone: a mail is marked only by
post-processing, after the flow finished with it. Post-processing is batched into one
command per action (UID STORE / UID MOVE / UID EXPUNGE with a UID set).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from flowrt.adapters.mail.imap import errors
from flowrt.adapters.mail.imap.client import ImapClient
from flowrt.adapters.mail.imap.parse import response_code, response_text
from flowrt.adapters.mail.imap.session import open_imap
from flowrt.adapters.mail.model import PostProcess
from flowrt.adapters.mail.sender.endpoint import MailEndpoint
from flowrt.adapters.mail.sender.mailbox import Candidate, plan_batches
from flowrt.errors import FlowrtError, FolderNotFoundException
from flowrt.source_state import Partition

__all__ = ["CLAIM_PREFIX", "DEAD_KEYWORD", "ImapMailbox"]

DEAD_KEYWORD = "$flowrt-dead"
# a kept connection's folder is SELECTed (and searched) again at least this often, whatever
# the NOOPs in between said: a server that does not tell of every change (flags set by
# another client are a MAY) delays a mail by this much at most
RESELECT_AFTER = 600.0
CLAIM_PREFIX = "$flowrt-claim-"


class ImapMailbox:
    """A selected IMAP folder; open with :meth:`open`."""

    supports_idle = True
    complete_listing = False
    keepable = True

    def __init__(
        self,
        client: ImapClient,
        endpoint: MailEndpoint,
        *,
        folder: str,
        selection: str,
        post_process: PostProcess,
        claim_owner: str = "",
        partition: Partition | None = None,
    ) -> None:
        self.client = client
        self.claim_owner = claim_owner  # names this runtime's claim keyword; "" claims nothing
        self.partition = partition  # workers N: only the mails of this worker
        self.endpoint = endpoint
        self.folder = folder
        self.selection = selection
        self.post_process = post_process
        self.uidvalidity = client.selected.uidvalidity if client.selected else 0
        self.scope = f"imap:{endpoint.login.user}@{endpoint.host}/{folder}"
        self.generation = str(self.uidvalidity)
        self._selected_at = time.monotonic()
        # the folder's change count before the last search that found no candidate (None:
        # it found some); the same count after a NOOP means the search would find none again
        self._empty_at: int | None = None
        self._unchanged = False
        self._claims_released = False  # on this connection, and none claimed since

    @classmethod
    async def open(
        cls,
        endpoint: MailEndpoint,
        *,
        folder: str,
        selection: str,
        post_process: PostProcess,
        claim_owner: str = "",
        partition: Partition | None = None,
    ) -> ImapMailbox:
        client = await open_imap(endpoint)
        try:
            await _select(client, endpoint, folder)
            if post_process.action == "archive" and post_process.folder:
                await _check_archive(client, endpoint, post_process.folder)
        except BaseException:
            await client.logout()
            raise
        return cls(
            client,
            endpoint,
            folder=folder,
            selection=selection,
            post_process=post_process,
            claim_owner=claim_owner,
            partition=partition,
        )

    def _mine(self, uids: Sequence[int]) -> list[int]:
        """The UIDs of this worker's partition (all of them without workers)."""
        if self.partition is None:
            return list(uids)
        return [uid for uid in uids if self.partition.holds(uid)]

    # -- listing and fetching

    async def candidates(self) -> list[Candidate]:
        if self._unchanged:  # see resume
            self._unchanged = False
            return []
        criteria = ("UNSEEN", "UNDELETED") if self.selection == "unread" else ("UNDELETED",)
        # counted before the search: a change reported during it is a change after it
        changes = self.client.protocol.folder_changes
        # a dead letter stays in the folder, visible, but is not handed over again
        uids = await self.client.uid_search(*criteria, "UNKEYWORD", DEAD_KEYWORD)
        self._empty_at = None if uids else changes
        prefix = f"uid:{self.uidvalidity}:"
        return [Candidate(uid, f"{prefix}{uid}") for uid in self._mine(uids)]

    async def batches(
        self, todo: Sequence[Candidate]
    ) -> AsyncGenerator[list[tuple[Candidate, bytes]], None]:
        if not todo:
            return
        by_uid = {c.ref: c for c in todo}
        for uid, size in (await self.client.sizes(list(by_uid))).items():
            if uid in by_uid:
                by_uid[uid].size = size
        plan = plan_batches([c for c in todo if c.ref in by_uid])
        pending: asyncio.Task[Any] | None = None
        try:
            pending = asyncio.ensure_future(self.client.fetch_mails([c.ref for c in plan[0]]))
            for index in range(len(plan)):
                assert pending is not None
                mails = await pending
                pending = None
                if index + 1 < len(plan):  # fetch the next batch while this one is processed
                    pending = asyncio.ensure_future(
                        self.client.fetch_mails([c.ref for c in plan[index + 1]])
                    )
                # a mail deleted by another client meanwhile is simply not in the answer
                yield [(by_uid[m.uid], m.raw) for m in mails if m.uid in by_uid]
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    def properties(self, candidate: Candidate) -> dict[str, Any]:
        return {
            "mail.protocol": "imap",
            "mail.host": self.endpoint.host,
            "mail.user": self.endpoint.login.user,
            "mail.folder": self.folder,
            "mail.uid": candidate.ref,
            "mail.uidvalidity": self.uidvalidity,
        }

    # -- post-processing

    async def finish(self, done: Sequence[Candidate]) -> None:
        """Change the mailbox for mails the flow finished with, one command per action."""
        uids = sorted({c.ref for c in done})
        if not uids:
            return
        post = self.post_process
        if post.action == "keep":
            return
        if post.action == "mark-read" or (post.action == "archive" and post.mark_read):
            await self.client.uid_store(uids, "+", "\\Seen")
        if post.action == "delete":
            await self.client.uid_store(uids, "+", "\\Deleted")
            await self.client.uid_expunge(uids)
        elif post.action == "archive" and post.folder:
            if self.claim_owner and self.can_claim:
                # the keyword would move along; taken off first (a runtime of another
                # store could claim the mail in the one round trip until the move)
                await self.client.uid_store(uids, "-", f"{CLAIM_PREFIX}{self.claim_owner}")
            await self._move(uids, post.folder)

    async def _move(self, uids: list[int], folder: str) -> None:
        if self.client.has("MOVE"):
            response = await self.client.uid_move(uids, folder)
        else:  # RFC 6851 section 3.3: COPY, mark deleted, expunge those
            response = await self.client.uid_copy(uids, folder)
            if response.result == "OK":
                await self.client.uid_store(uids, "+", "\\Deleted")
                await self.client.uid_expunge(uids)
        if response.result != "OK":
            if response_code(response) in ("TRYCREATE", "NONEXISTENT"):
                raise _archive_missing(self.endpoint, folder, response_text(response))
            raise errors.move_failed(folder, response_text(response))

    # -- claiming against other runtimes

    @property
    def can_claim(self) -> bool:
        return self.client.has("CONDSTORE")

    async def claim(self, todo: Sequence[Candidate]) -> list[Candidate]:
        """The candidates this runtime may hand over: those it claims now, or claimed
        before, with the keyword ``$flowrt-claim-OWNER`` set through CONDSTORE.

        Why a keyword set with ``UNCHANGEDSINCE``: every change to a mail raises its
        MODSEQ above all before it, so of two runtimes that read the same MODSEQs and both
        try to claim, the second one's STORE is refused for that mail (``[MODIFIED]``):
        exactly one gets it, with no shared store between them. The claim is released at
        the end of the poll (:meth:`release_claims`), after the mail was marked read, moved
        or deleted, so a mail's flags end as without claiming; a mail another runtime read
        meanwhile (now \\Seen, or \\Deleted) is no candidate any more. The STORE is not
        silent: should both STOREs get through (a MODSEQ read newer than the flags read with
        it), the second finds the first's keyword in its reply and steps back. A claim left
        by a crash is this runtime's own after a restart, unless another runtime's keyword
        is on the mail too (then it steps back); a mail claimed by another runtime is left
        to it. Without CONDSTORE nothing is claimed (the poller warns)."""
        if not todo or not self.claim_owner or not self.can_claim:
            return list(todo)
        mine = f"{CLAIM_PREFIX}{self.claim_owner}"
        self._claims_released = False
        by_uid = {c.ref: c for c in todo}
        items = await self.client.uid_fetch(list(by_uid), "(UID FLAGS MODSEQ)")
        ours: set[int] = set()
        free: dict[int, int] = {}
        back: list[int] = []  # ours and another's: see below
        for item in items:
            uid = item.get("uid")
            if uid not in by_uid:
                continue
            flags = item.get("flags", ())
            claims = {f.lower() for f in flags if f.lower().startswith(CLAIM_PREFIX)}
            if mine.lower() in claims and len(claims) > 1:
                # a claim that came second, and a crash before it stepped back: the other
                # runtime may be working on the mail; if it crashed too, the mail is free
                # again once both stepped back
                back.append(uid)
            elif mine.lower() in claims:
                ours.add(uid)
            elif claims or "\\Deleted" in flags:
                continue
            elif "\\Seen" in flags and self.selection == "unread":
                continue  # done by another runtime since the search
            else:
                free[uid] = int(item.get("modseq", 0))
        if free:
            stored = await self.client.claim(sorted(free), max(free.values()), mine)
            # The server holds flags per message, so of two claims on one mail the second
            # finds the first's keyword in its own STORE's reply, whatever the MODSEQs it
            # read before (a view that saw a newer MODSEQ than the flags it showed let both
            # STOREs through): that one steps back, exactly one runtime keeps the mail.
            second = [uid for uid, flags in stored.items() if _claimed_by_another(flags, mine)]
            back += second
            ours |= set(stored) - set(second)
        if back:
            await self.client.uid_store(sorted(back), "-", mine)
        return [c for c in todo if c.ref in ours]

    async def release_claims(self) -> None:
        """Take this runtime's claims off (those a crash left too): done mails are read or
        gone by now, failed ones free for the next poll."""
        if not self.claim_owner or not self.can_claim or self._claims_released:
            return  # (a kept connection's polls that claimed nothing: nothing to search)
        mine = f"{CLAIM_PREFIX}{self.claim_owner}"
        # the workers of a mailbox share the runtime's keyword: each takes off its own only,
        # not the claims of another worker's mails in flight
        uids = self._mine(await self.client.uid_search("KEYWORD", mine))
        if uids:
            await self.client.uid_store(uids, "-", mine)
        self._claims_released = True

    # -- dead letters

    async def dead_letter(self, done: Sequence[Candidate], place: str, folder: str) -> None:
        """Put mails whose attempts are over in their dead-letter place: the keyword
        $flowrt-dead (``default``, ``receiver``), a folder, deleted, or left (``keep``)."""
        uids = sorted({c.ref for c in done})
        if not uids or place == "keep":
            return
        if place == "folder":
            if not any(name == folder for name, _ in await self.client.list_folders(folder)):
                raise errors.folder_not_found(
                    folder,
                    self.endpoint.login.user,
                    _where(self.endpoint),
                    "the dead-letter folder does not exist",
                    f"create the folder {folder!r} in the mailbox, or change `dead-letter` in "
                    "the flow's on-error block; the mail stays in the mailbox meanwhile",
                )
            await self._move(uids, folder)
        elif place == "delete":
            await self.client.uid_store(uids, "+", "\\Deleted")
            await self.client.uid_expunge(uids)
        else:
            await self.client.uid_store(uids, "+", DEAD_KEYWORD)

    async def revive(self, keys: Sequence[str]) -> None:
        """Take the dead-letter keyword off mails put back for another try (replay)."""
        prefix = f"uid:{self.uidvalidity}:"
        uids = sorted(int(k[len(prefix) :]) for k in keys if k.startswith(prefix))
        if uids:
            self._empty_at, self._unchanged = None, False  # (a silent STORE reports nothing)
            await self.client.uid_store(uids, "-", DEAD_KEYWORD)

    # -- IDLE

    def clear_new_mail(self) -> None:
        self.client.protocol.new_mail.clear()

    def new_mail_pending(self) -> bool:
        return self.client.protocol.new_mail.is_set()

    async def wait_for_mail(self, wait: float, interrupt: asyncio.Event | None) -> bool:
        return await self.client.idle(wait, interrupt=interrupt)

    # -- between polls

    async def resume(self) -> None:
        """The next poll on this connection. The folder stays selected: a NOOP has the
        server report what changed since (new mail, expunges, flags; a UIDVALIDITY that
        changed under a selected folder ends the session), and when it reported nothing
        after a search that found no candidate, this poll does not search again. Every
        :data:`RESELECT_AFTER` it is SELECTed again instead, as a new connection would. The
        archive folder is checked as a new connection would. A connection the server closed
        meanwhile raises StoreClosedException at once (the client fails commands on a
        closed connection)."""
        self._unchanged = False
        if time.monotonic() - self._selected_at < RESELECT_AFTER and self.client.selected:
            await self.client.noop()
        else:
            self._empty_at = None
            await _select(self.client, self.endpoint, self.folder)
            self._selected_at = time.monotonic()
            self.uidvalidity = self.client.selected.uidvalidity if self.client.selected else 0
            self.generation = str(self.uidvalidity)
        if self.post_process.action == "archive" and self.post_process.folder:
            await _check_archive(self.client, self.endpoint, self.post_process.folder)
        self._unchanged = self._empty_at == self.client.protocol.folder_changes

    # -- closing

    async def close(self) -> None:
        await self.client.logout()

    def abort(self) -> None:
        self.client.abort()


async def _select(client: ImapClient, endpoint: MailEndpoint, folder: str) -> None:
    response = await client.select(folder)
    if response.result == "OK":
        return
    text = response_text(response)
    if response_code(response) == "NONEXISTENT" or response.result == "NO":
        try:
            names: list[str] | None = [name for name, _ in await client.list_folders("*")]
        except (FlowrtError, OSError):  # only the hint is lost; the failure stands
            names = None
        hint = errors.missing_folder_hint(folder, names, _list_command(endpoint))
        raise errors.folder_not_found(folder, endpoint.login.user, _where(endpoint), text, hint)
    raise errors.select_failed(folder, response.result, text)


async def _check_archive(client: ImapClient, endpoint: MailEndpoint, folder: str) -> None:
    """Fail before any mail is processed rather than after: an archive folder that does not
    exist would leave every processed mail unmoved."""
    if not any(name == folder for name, _ in await client.list_folders(folder)):
        raise _archive_missing(endpoint, folder, "no such folder")


def _archive_missing(endpoint: MailEndpoint, folder: str, text: str) -> FolderNotFoundException:
    return errors.archive_missing(
        folder, endpoint.login.user, _where(endpoint), text, _list_hint(endpoint)
    )


def _where(endpoint: MailEndpoint) -> str:
    return f"{endpoint.host}:{endpoint.port}"


def _list_command(endpoint: MailEndpoint) -> str:
    return errors.list_folders_command(
        endpoint.host,
        endpoint.port,
        endpoint.protection,
        endpoint.login.credential,
        endpoint.route.location if endpoint.route is not None else None,
    )


def _list_hint(endpoint: MailEndpoint) -> str:
    return f"list the folders with `{_list_command(endpoint)}`"


def _claimed_by_another(flags: Sequence[str], mine: str) -> bool:
    return any(
        flag.lower().startswith(CLAIM_PREFIX) and flag.lower() != mine.lower() for flag in flags
    )
