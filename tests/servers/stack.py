"""All loopback servers at once (for ``scripts/demo`` and ad-hoc experiments).

``with MailStack() as stack:`` gives ``stack.dovecot``, ``stack.postfix``, ``stack.dante``
(ports on 127.0.0.1) and ``stack.ca`` (the root CA clients must trust).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .ca import ServerCert, TestCA
from .dante import DanteServer
from .dovecot import DovecotServer
from .postfix import PostfixServer

__all__ = ["MailStack", "proxied_destinations"]


def proxied_destinations(
    dovecot: DovecotServer | None, postfix: PostfixServer | None
) -> list[tuple[str, int | None]]:
    """The mail ports a test SOCKS proxy lets through (LMTP and auth stay blocked)."""
    out: list[tuple[str, int | None]] = []
    if dovecot is not None:
        for name in ("imap", "imaps", "pop3", "pop3s"):
            port = dovecot.ports()[name]
            if port:
                out.append((dovecot.host, port))
    if postfix is not None:
        out += [(postfix.host, p) for p in postfix.ports().values()]
    return out


class MailStack:
    """Test CA (root -> intermediate), Dovecot, Postfix delivering to it, Dante in front."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        with_postfix: bool = True,
        with_dante: bool = True,
    ) -> None:
        self.ca = TestCA()
        self.intermediate = self.ca.new_intermediate()
        self.server_cert: ServerCert = self.intermediate.issue_server_cert()
        self.dovecot = DovecotServer(
            cert=self.server_cert, users=dict(users) if users is not None else None
        )
        self.with_postfix = with_postfix
        self.with_dante = with_dante
        self.postfix: PostfixServer | None = None
        self.dante: DanteServer | None = None

    def start(self) -> MailStack:
        try:
            self.dovecot.start()
            if self.with_postfix:
                self.postfix = PostfixServer(self.dovecot, cert=self.server_cert).start()
            if self.with_dante:
                allow = proxied_destinations(self.dovecot, self.postfix)
                self.dante = DanteServer(allow_to=allow).start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in (self.dante, self.postfix, self.dovecot):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.close()

    def describe(self) -> dict[str, Any]:
        """Hosts, ports and users, e.g. for printing by a demo."""
        info: dict[str, Any] = {
            "host": self.dovecot.host,
            "ca_subject": self.ca.subject_cn,
            "dovecot": self.dovecot.ports(),
            "users": dict(self.dovecot.users),
        }
        if self.postfix is not None:
            info["postfix"] = self.postfix.ports()
        if self.dante is not None:
            info["dante"] = {"socks5": self.dante.port}
        return info

    def __enter__(self) -> MailStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
