"""SMTP send rate to a server one round trip away, one JSON line per figure.

On loopback a round trip costs nothing, so what pipelining and several mails in flight buy
is hidden there; against Microsoft 365 or Gmail (20-50 ms away) it is most of the time. Here
real Postfix (it offers PIPELINING and CHUNKING) sits behind a relay, a process of its own,
that holds every byte for half of ``--rtt`` in each direction. flowrt's receiver sends 2 KB
mails to it with ``deliver`` (compose and send), in three ways, each at concurrency 1 and 4
(mails in flight; the pool opens a session per mail in flight, up to 4):

- ``chunking``: MAIL, RCPT and the message as one ``BDAT n LAST`` chunk in one write: one
  round trip per mail;
- ``pipelining``: the same without CHUNKING (hidden from the client): MAIL, RCPT and DATA in
  one write, the message after the 354: two round trips;
- ``one-by-one``: neither (hidden too): MAIL, RCPT, DATA and the message, each waiting for
  its reply: four round trips.

Figures: ``rate`` (mails/s, median of ``--rounds``) per mode and concurrency, and
``round_trips_per_mail``: concurrency / (rate x rtt), what one mail costs in round trips
(the CPU work is small beside them). Sessions are open before the clock starts.

Usage: ``python benchmarks/smtp_latency.py [--mails 200] [--rtt 10] [--rounds 3]``. Needs
the ``postfix`` and ``dovecot-imapd`` packages. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.servers

from benchmarks import smtp_send  # noqa: E402
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver  # noqa: E402
from flowrt.adapters.mail.smtp.session import SmtpSession  # noqa: E402
from flowrt.security import TenantSecurity  # noqa: E402
from flowrt.security.setup import init_tenant  # noqa: E402
from flowrt.tenant import Tenant  # noqa: E402
from tests.servers import DovecotServer, PostfixServer  # noqa: E402

MODES = {"chunking": set(), "pipelining": {"chunking"}, "one-by-one": {"chunking", "pipelining"}}


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    record = {"benchmark": "smtp_latency", "figure": figure, "value": value, "unit": unit}
    print(json.dumps({**record, **extra}), flush=True)


# ----------------------------------------------------------------------------- the relay


async def _relay(upstream: int, delay: float, ready: multiprocessing.SimpleQueue[int]) -> None:
    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Bytes in order, each written ``delay`` seconds after it was read."""
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def later() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    writer.close()
                    return
                writer.write(data)

        sending = asyncio.ensure_future(later())
        while data := await reader.read(65536):
            held.put_nowait((time.monotonic() + delay, data))
        held.put_nowait((time.monotonic() + delay, b""))
        await sending

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    ready.put(int(server.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()  # until the benchmark ends the process


def _relay_process(upstream: int, delay: float, ready: multiprocessing.SimpleQueue[int]) -> None:
    asyncio.run(_relay(upstream, delay, ready))


@contextlib.contextmanager
def relay(upstream: int, rtt: float) -> Iterator[int]:
    """A port that reaches ``upstream`` with ``rtt`` seconds of round trip added."""
    ready: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    process = multiprocessing.Process(
        target=_relay_process, args=(upstream, rtt / 2, ready), daemon=True
    )
    process.start()
    try:
        yield ready.get()
    finally:
        process.kill()
        process.join()


# ----------------------------------------------------------------------------- the sender


@contextlib.contextmanager
def hiding(extensions: set[str]) -> Iterator[None]:
    """The client acts as if the server did not offer ``extensions``."""
    real = SmtpSession.supports

    def supports(self: SmtpSession, extension: str) -> bool:
        return extension.lower() not in extensions and real(self, extension)

    with mock.patch.object(SmtpSession, "supports", supports):
        yield


async def rate(port: int, recipient: str, mails: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory(prefix="flowrt-bench-") as folder:
        init_tenant(Path(folder) / "tenant", environ={})
        security = TenantSecurity.open(Tenant(Path(folder) / "tenant"))
        block = smtp_send.receiver_block(port, concurrency, recipient)
        async with SmtpReceiver(block, security, per_target=concurrency) as receiver:
            await smtp_send.flowrt_round(receiver, concurrency * 2, concurrency)  # sessions open
            seconds = await smtp_send.flowrt_round(receiver, mails, concurrency)
    return mails / seconds


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    args.add_argument("--mails", type=int, default=200)
    args.add_argument("--rtt", type=float, default=10.0, help="milliseconds")
    args.add_argument("--rounds", type=int, default=3)
    opts = args.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rtt = opts.rtt / 1000
    with (
        DovecotServer(users={}) as dovecot,
        PostfixServer(dovecot) as postfix,
        relay(postfix.smtp_port, rtt) as port,
    ):
        recipient = dovecot.new_user("latency").address
        for mode, hidden in MODES.items():
            for concurrency in (1, 4):
                with hiding(hidden):
                    rates = [
                        asyncio.run(rate(port, recipient, opts.mails, concurrency))
                        for _ in range(opts.rounds)
                    ]
                got = statistics.median(rates)
                extra = {"mode": mode, "concurrency": concurrency, "rtt_ms": opts.rtt}
                emit("rate", round(got, 1), "mails/s", **extra)
                emit("round_trips_per_mail", round(concurrency / (got * rtt), 2), "", **extra)


if __name__ == "__main__":
    main()
