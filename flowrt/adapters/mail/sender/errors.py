"""What IMAP and POP3 failures share, worded once for the flow and for ``flowrt test``: a
server that accepted the connection but never greeted, which is most often a plain client on
an implicit-TLS port (both sides wait for the other)."""

from __future__ import annotations

from flowrt.errors import FlowrtError, MailboxLockedException, SocketTimeoutException
from flowrt.net import ProxyRoute, speaks_tls_at_once

__all__ = ["explain_silent_greeting", "mailbox_locked", "silent_greeting_hint", "timed_out"]

# protocol -> (implicit TLS protection, its usual port, the usual STARTTLS port)
PORTS = {"imap": ("imaps", 993, 143), "pop3": ("pop3s", 995, 110)}


def timed_out(exc: BaseException) -> bool:
    """Whether a read timeout is somewhere in ``exc``'s chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SocketTimeoutException):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def silent_greeting_hint(
    protocol: str, host: str, port: int, protection: str, timeout: float, *, tls_at_once: bool
) -> str:
    implicit, tls_port, plain_port = PORTS[protocol]
    address = f"{host}:{port}"
    if tls_at_once:
        return (
            f"{address} speaks TLS at once (implicit TLS, {implicit.upper()}), so it never "
            f"greets a client that waits in clear; use protection {implicit} for port {port}, "
            f"or port {plain_port} with protection starttls-mandatory"
        )
    if protection == implicit:
        return (
            f"{address} accepted the connection but neither completed a TLS handshake nor "
            f"greeted within {timeout:g}s; check that it is an {implicit.upper()} port (usually "
            f"{tls_port}) and that the server is healthy, or raise `timeout`"
        )
    return (
        f"{address} accepted the connection but sent no {protocol.upper()} greeting within "
        f"{timeout:g}s; check that it is {'an' if protocol == 'imap' else 'a'} "
        f"{protocol.upper()} port ({plain_port}, or "
        f"{tls_port} with protection {implicit}) and that the server is healthy (behind a "
        "connector, its mapping), or raise `timeout`"
    )


async def explain_silent_greeting(
    error: FlowrtError,
    *,
    protocol: str,
    host: str,
    port: int,
    protection: str,
    timeout: float,
    route: ProxyRoute | None,
) -> None:
    """Give ``error`` (no greeting within the timeout) the hint that names the fix; a
    second connection asks whether the port speaks TLS at once. The same wrong setting
    fails the same way on every poll, so it is then no longer retryable."""
    implicit = PORTS[protocol][0]
    tls_at_once = protection != implicit and await speaks_tls_at_once(
        host, port, route=route, timeout=timeout
    )
    error.hint = silent_greeting_hint(
        protocol, host, port, protection, timeout, tls_at_once=tls_at_once
    )
    if tls_at_once and hasattr(error, "retryable"):
        error.retryable = False


def mailbox_locked(key: str, holder: str, until: str) -> MailboxLockedException:
    """Another runtime's poller holds the mailbox's lease: this poll did not run."""
    return MailboxLockedException(
        f"mailbox {key} is being polled by {holder} (lease until {until}); this poll did not run",
        key=key,
        holder=holder,
        hint=f"one runtime polls a mailbox at a time; if {holder} is gone, its lease expires at "
        f"{until}, or end it now with `flowrt locks release {key}`",
    )
