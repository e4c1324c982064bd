"""A poller's mailbox connection kept open between polls.

Logging in is most of what a poll of an empty mailbox costs (TCP, the TLS handshake, LOGIN,
SELECT): 500 flows polling every minute are eight TLS logins a second. A kept connection
makes the next poll one SELECT on the connection already logged in.

The rules:

- Only a mailbox that can resume (IMAP: ``keepable``) is kept, and only for ``keep``
  seconds; then it is logged out. Servers log out a connection idle for 30 minutes
  (RFC 9051: the autologout timer is at least 30 minutes; Dovecot's is 30), so a keep below
  that does not meet a server's drop in the normal case.
- A kept connection the server closed meanwhile (autologout, restart, a kick), or that no
  longer answers, is not a failed poll: it is dropped and a new one opened, at once and
  silently. Only when that new connection fails is the poll a failure, as before.
- The poller gives back a connection only after a poll that ended well; a failed poll
  aborts its connection. On stop, undeploy or a lease lost the connection is closed
  (:meth:`aclose`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from flowrt.adapters.mail.sender.mailbox import Mailbox
from flowrt.errors import summary

__all__ = ["KeptConnection"]

_log = structlog.get_logger("flowrt.sender")


class KeptConnection:
    """Opens mailboxes with ``opener``, and keeps the last one given back for reuse."""

    def __init__(
        self,
        opener: Callable[[], Awaitable[Mailbox]],
        *,
        keep: float,
        log: Any = None,
    ) -> None:
        self._opener = opener
        self.keep = keep
        self._log = log or _log
        self._parked: Mailbox | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0  # new connections (logins)
        self.resumed = 0  # polls that reused a kept connection
        self.dropped = 0  # kept connections found closed or silent: replaced by a new one

    @property
    def holding(self) -> bool:
        return self._parked is not None

    async def open(self) -> Mailbox:
        """The kept mailbox, resumed, or else a new one from the opener (whose failures are
        the poll's)."""
        parked = self._take()
        if parked is not None:
            try:
                await parked.resume()
            except asyncio.CancelledError:
                parked.abort()
                raise
            except Exception as exc:
                parked.abort()
                self.dropped += 1
                self._log.info("kept connection is gone; logging in again", reason=summary(exc))
            else:
                self.resumed += 1
                return parked
        mailbox = await self._opener()
        self.opened += 1
        return mailbox

    async def give_back(self, mailbox: Mailbox, *, keep: bool = True) -> None:
        """After a poll that ended well: keep ``mailbox`` for the next poll, or log out."""
        if not (keep and self.keep > 0 and getattr(mailbox, "keepable", False)):
            await mailbox.close()
            return
        await self.aclose()  # (never two: the poller holds one mailbox at a time)
        self._parked = mailbox
        self._expiry = asyncio.get_running_loop().call_later(self.keep, self._expire)

    async def aclose(self) -> None:
        """Log out the kept connection, if any (stop, undeploy, a lease lost)."""
        parked = self._take()
        if parked is not None:
            await parked.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _take(self) -> Mailbox | None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        parked, self._parked = self._parked, None
        return parked

    def _expire(self) -> None:
        self._expiry = None
        parked = self._take()
        if parked is None:
            return
        task = asyncio.ensure_future(_quietly(parked.close()))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _quietly(closing: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await closing
