"""Free loopback ports and bounded waits for listeners.

Ports are picked at random *below* the kernel's ephemeral range, so that outgoing client
connections of concurrent test sessions cannot grab a port between our check and the
server's bind; a port handed out once is never handed out again by this process. Two
sessions may still race for the same port in that short window: server start-up detects
"Address already in use" and retries with new ports.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time

__all__ = [
    "free_port",
    "free_ports",
    "listening_ports",
    "port_is_open",
    "ports_listening",
    "wait_for_port",
]

_lock = threading.Lock()
_handed_out: set[int] = set()
_rng = random.SystemRandom()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # No SO_REUSEADDR: a port in TIME_WAIT or listened on by anyone is not "free".
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listens on, never returned twice per process."""
    low, high = _ephemeral_range()
    if low - 1 - 20000 >= 1000:
        candidates_from, candidates_to = 20000, low - 1
    elif 65535 - (high + 1) >= 1000:
        candidates_from, candidates_to = high + 1, 65535
    else:
        candidates_from = candidates_to = 0
    with _lock:
        for _ in range(200):
            if candidates_from:
                port = _rng.randint(candidates_from, candidates_to)
            else:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((host, 0))
                    port = int(s.getsockname()[1])
            if port in _handed_out or not _can_bind(host, port):
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free TCP port found on {host}")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    return [free_port(host) for _ in range(count)]


def listening_ports() -> set[int] | None:
    """TCP ports in LISTEN state on this host (from /proc/net/tcp*), None if unreadable.

    Checking readiness this way does not connect, so a server does not fork a process for a
    probe connection (which, with Dovecot, can delay a quick stop by seconds).
    """
    ports: set[int] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports if readable else None


def ports_listening(host: str, ports: list[int]) -> bool:
    """True when every port listens (via /proc; falls back to connecting)."""
    listening = listening_ports()
    if listening is not None:
        return all(p in listening for p in ports)
    return all(port_is_open(host, p) for p in ports)


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    """Wait (bounded) until ``host:port`` accepts connections; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if port_is_open(host, port, timeout=min(0.5, max(0.05, deadline - time.monotonic()))):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
