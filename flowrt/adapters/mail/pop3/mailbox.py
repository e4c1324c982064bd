"""A POP3 maildrop as the poller's :class:`~flowrt.adapters.mail.sender.mailbox.Mailbox`.

POP3 has one mailbox, no flags and no push. A session sees the maildrop as it was at login,
and DELE takes effect only at QUIT: so a poll is one session, post-processing (``delete``)
is DELE for each finished mail and then QUIT, and a session that breaks off deletes nothing.
Mails are told apart by UIDL; ``keep`` relies on the idempotency records alone. When the
server has no UIDL, a mail's key is its Message-ID (else a digest of its bytes), known
only after it was fetched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from flowrt.adapters.mail.model import PostProcess
from flowrt.adapters.mail.pop3.client import Pop3Client
from flowrt.adapters.mail.pop3.session import open_pop3
from flowrt.adapters.mail.sender.endpoint import MailEndpoint
from flowrt.adapters.mail.sender.mailbox import Candidate
from flowrt.errors import MessagingException

__all__ = ["Pop3Mailbox"]


class Pop3Mailbox:
    supports_idle = False

    def __init__(
        self, client: Pop3Client, endpoint: MailEndpoint, post_process: PostProcess
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.post_process = post_process
        self.scope = f"pop3:{endpoint.login.user}@{endpoint.host}"
        self.generation = ""
        self.complete_listing = True
        self._finished = False

    @classmethod
    async def open(cls, endpoint: MailEndpoint, *, post_process: PostProcess) -> Pop3Mailbox:
        return cls(await open_pop3(endpoint), endpoint, post_process)

    async def candidates(self) -> list[Candidate]:
        sizes = await self.client.list()
        uidl = await self.client.uidl()
        if uidl is None:
            self.complete_listing = False  # keys are known only after fetching
            return [Candidate(n, "", size) for n, size in sorted(sizes.items())]
        return [
            Candidate(n, f"uidl:{uid}", sizes.get(n, 0), uid) for n, uid in sorted(uidl.items())
        ]

    async def batches(
        self, todo: Sequence[Candidate]
    ) -> AsyncGenerator[list[tuple[Candidate, bytes]], None]:
        # one at a time: a POP3 response cannot be skipped, so there is nothing to plan
        for candidate in todo:
            yield [(candidate, await self.client.retr(candidate.ref))]

    def properties(self, candidate: Candidate) -> dict[str, Any]:
        props: dict[str, Any] = {
            "mail.protocol": "pop3",
            "mail.host": self.endpoint.host,
            "mail.user": self.endpoint.login.user,
            "mail.folder": "INBOX",
            "mail.number": candidate.ref,
        }
        if candidate.uidl:
            props["mail.uidl"] = candidate.uidl
        return props

    async def finish(self, done: Sequence[Candidate]) -> None:
        """DELE the finished mails (post-process delete) and QUIT, which applies them."""
        if self.post_process.action == "delete":
            for candidate in done:
                await self.client.dele(candidate.ref)
        self._finished = True
        await self.client.quit()

    can_claim = False  # POP3 has no flags: nothing keeps two runtimes off one mail

    async def claim(self, todo: Sequence[Candidate]) -> list[Candidate]:
        return list(todo)

    async def release_claims(self) -> None:
        pass

    async def dead_letter(self, done: Sequence[Candidate], place: str, folder: str) -> None:
        """POP3 keeps a dead letter in the maildrop (its record stops it being handed over
        again), or deletes it; there are no folders to move it to."""
        if place == "folder":
            raise MessagingException(
                f"dead-letter folder {folder!r}: POP3 has no folders",
                hint="use `dead-letter keep`, `delete` or `receiver NAME` with POP3",
                retryable=False,
            )
        if place == "delete":
            for candidate in done:
                await self.client.dele(candidate.ref)

    async def revive(self, keys: Sequence[str]) -> None:
        pass  # nothing marks a POP3 dead letter but its record

    # POP3 has no push; the poller never calls these for it
    def clear_new_mail(self) -> None:
        pass

    def new_mail_pending(self) -> bool:
        return False

    async def wait_for_mail(self, wait: float, interrupt: asyncio.Event | None) -> bool:
        raise NotImplementedError("POP3 has no IDLE")

    async def close(self) -> None:
        """Leave without QUIT (unless finish() sent it): nothing is deleted."""
        await self.client.close()

    def abort(self) -> None:
        self.client.abort()
