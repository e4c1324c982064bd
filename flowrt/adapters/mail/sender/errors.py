"""What IMAP and POP3 failures share, worded once for the flow and for ``flowrt test``: a
server that accepted the connection but never greeted, which is most often a plain client on
an implicit-TLS port (both sides wait for the other); a server that does not offer STARTTLS
to ``starttls-mandatory``; the mailbox lock held by another runtime."""

from __future__ import annotations

from flowrt.adapters.mail.errors import connect_text
from flowrt.errors import (
    FlowrtError,
    MailboxLockedException,
    MessagingException,
    SocketTimeoutException,
    StoreClosedException,
)
from flowrt.net import ProxyRoute, speaks_tls_at_once

__all__ = [
    "explain_silent_greeting",
    "greeting_not_ok",
    "mailbox_locked",
    "silent_greeting_hint",
    "starttls_missing",
    "timed_out",
]

# protocol -> (implicit TLS protection, its usual port, the usual STARTTLS port)
PORTS = {"imap": ("imaps", 993, 143), "pop3": ("pop3s", 995, 110)}


# how a server that is what it says refuses a session in its greeting, and greets
REFUSALS = {"imap": ("* BYE",), "pop3": ("-ERR",)}
GREETINGS = {"imap": ("* OK", "* PREAUTH"), "pop3": ("+OK",)}


def greeting_not_ok(protocol: str, host: str, port: int, greeting: str) -> MessagingException:
    """A session that did not start after ``greeting`` (raise it from its ``__cause__``): a
    refusal (IMAP ``* BYE``, POP3 ``-ERR``) is a server of the protocol that takes no
    session now; a greeting followed by a closed connection is one that dropped us; anything
    else is not this protocol's server (a wrong port), which no retry heals."""
    name, address = protocol.upper(), f"{host}:{port}"
    if greeting.upper().startswith(GREETINGS[protocol]):
        error = MessagingException(
            connect_text(protocol, host, port),
            hint=f"{address} greeted ({greeting}) and then closed the connection: it may limit "
            "connections from this machine (rate limit, blocklist, too many sessions) or be "
            "shutting down; its log says why",
            retryable=True,
        )
        error.__cause__ = StoreClosedException(
            f"{name} host {address} closed the connection right after its greeting"
        )
        return error
    if greeting.upper().startswith(REFUSALS[protocol]):
        return MessagingException(
            f"{connect_text(protocol, host, port)} the server refused the session: {greeting}",
            hint=f"{address} answers as {protocol_article(protocol)} {name} server but takes no "
            "session now: it may limit connections from this machine (rate limit, blocklist, "
            "too many sessions) or be shutting down; its log says why",
            retryable=True,
        )
    implicit, tls_port, plain_port = PORTS[protocol]
    return MessagingException(
        f"{connect_text(protocol, host, port)} not {protocol_article(protocol)} {name} "
        f"greeting: {greeting[:80]}",
        hint=f"is {address} {protocol_article(protocol)} {name} port? ({name} {plain_port}, "
        f"{implicit.upper()} {tls_port})",
        retryable=False,
    )


def protocol_article(protocol: str) -> str:
    return "an" if protocol == "imap" else "a"


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


def starttls_missing(protocol: str, host: str, port: int, command: str) -> MessagingException:
    """``starttls-mandatory`` against a server that does not offer ``command`` (STARTTLS,
    STLS): never a fallback, since a stripped capability is what an attacker would do. The
    hint names the implicit-TLS port, since the implicit protection on this port would only
    time out."""
    implicit, tls_port, _ = PORTS[protocol]
    name = "STARTTLS" if command == "STARTTLS" else f"STARTTLS ({command})"
    address = f"{host}:{port}"
    return MessagingException(
        f"the {protocol.upper()} server {address} does not offer {name}; protection "
        "starttls-mandatory does not fall back, since falling back would send the login and "
        "the mails in clear",
        hint=f"a missing {command} may be the server's configuration or someone on the path "
        f"removing it; check with `flowrt test {protocol} {address} --protection "
        f"starttls-mandatory`, or use the server's {implicit.upper()} port with protection "
        f'{implicit} (address "{host}:{tls_port}", protection {implicit})',
        retryable=False,
    )


def mailbox_locked(key: str, holder: str, until: str) -> MailboxLockedException:
    """Another runtime's poller holds the mailbox's lease: this poll did not run."""
    return MailboxLockedException(
        f"mailbox {key} is being polled by {holder} (lease until {until}); this poll did not run",
        key=key,
        holder=holder,
        hint=f"one runtime polls a mailbox at a time; if {holder} is gone, its lease expires at "
        f"{until}, or end it now with `flowrt locks release {key}`",
    )
