"""IMAP fetch-process-mark rate and IDLE latency against a private Dovecot, one JSON line
per figure.

Work per mail, for every contender: fetch it (without setting \\Seen), run three small
in-memory transformations, mark it read. ``--mails`` mails of about 2 KB wait in one mailbox;
\\Seen is reset before each run. Contenders, measured in the same run:

- ``flowrt_rate``: :class:`MailPoller.poll_once` with ``max-messages`` = all mails and
  ``post-process mark-read``: each mail becomes an exchange (``mail_to_exchange``), gets its
  idempotency record in a fresh state DB, and ``handle`` does the three transformations
  (set a header, set a property, rewrite the body); connect and login are in the clock;
- ``aioimaplib_loop_rate``: the plain reference, as aioimaplib's documentation writes it:
  ``UID SEARCH UNSEEN``, then per mail ``UID FETCH uid (BODY.PEEK[])``, the same three
  transformations on ``email.message_from_bytes``, ``UID STORE uid +FLAGS (\\Seen)``;
- ``aioimaplib_batch_rate``: the plain loop batched by hand: one ``UID FETCH`` for all mails,
  the transformations, one ``UID STORE +FLAGS.SILENT`` (stock aioimaplib parser);
- ``flowrt_vs_aioimaplib_loop`` (the goal: at least 1) and ``flowrt_vs_aioimaplib_batch``;
- ``idle_latency_median`` / ``idle_latency_p90``: ms from an APPEND by another client (a
  thread with imaplib) to ``handle`` being called, with ``poll idle``, over ``--idle-mails``
  mails (goal: median under 100 ms);
- ``dovecot_idle_floor_median``: the reference: ms from the same APPEND to the server's
  ``* N EXISTS`` on a bare socket that enters IDLE afresh per mail. Dovecot delays IDLE
  notifications on purpose (``NOTIFY_DELAY_MSECS``, 500 ms, in its mailbox-watch code), so
  no IDLE client gets below this against Dovecot; ``idle_latency_added_by_flowrt`` is the
  difference of the medians: what flowrt adds (parse, record, handle, mark, re-IDLE).

Usage: ``python benchmarks/imap_poll.py [--mails 1000] [--rounds 3] [--idle-mails 20]``.
Best of ``rounds`` per contender. Needs the ``dovecot-imapd`` package. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email
import imaplib
import json
import logging
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aioimaplib
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.servers

from flowrt.adapters.mail.model import (  # noqa: E402
    Address,
    Auth,
    Connection,
    PollEvery,
    PollIdle,
    PostProcess,
    Proxy,
    Sender,
)
from flowrt.adapters.mail.sender.endpoint import MailEndpoint, MailLogin  # noqa: E402
from flowrt.adapters.mail.sender.poller import MailPoller  # noqa: E402
from flowrt.dsl.model import Pos  # noqa: E402
from flowrt.engine.exchange import Exchange  # noqa: E402
from flowrt.runtime.schedule import run_on_schedule  # noqa: E402
from flowrt.runtime.state import StateDB  # noqa: E402
from flowrt.security.secret import Secret  # noqa: E402
from tests.servers import DovecotServer, MailboxUser  # noqa: E402

SIZE = 2048


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    record = {"benchmark": "imap_poll", "figure": figure, "value": value, "unit": unit}
    print(json.dumps({**record, **extra}), flush=True)


def mail(i: int) -> bytes:
    head = (
        f"From: Plant <plant@example.com>\r\nTo: accounting@example.com\r\n"
        f"Subject: invoice {i:06d}\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <bench-{i}@flowrt.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = f"invoice line {i:06d} " + "x" * 58 + "\r\n"
    body = (line * (SIZE // len(line) + 1)).encode()[: SIZE - len(head)]
    return head + body


# ----------------------------------------------------------------------------- the mailbox


def fill(dovecot: DovecotServer, user: MailboxUser, count: int) -> None:
    with dovecot.imap(user.address, password=user.password) as client:
        for i in range(count):
            client.append("INBOX", None, None, mail(i))


def reset_seen(dovecot: DovecotServer, user: MailboxUser) -> None:
    with dovecot.imap(user.address, password=user.password) as client:
        client.select("INBOX")
        client.store("1:*", "-FLAGS.SILENT", "(\\Seen)")


def count_seen(dovecot: DovecotServer, user: MailboxUser) -> int:
    with dovecot.imap(user.address, password=user.password) as client:
        client.select("INBOX", readonly=True)
        _, data = client.search(None, "SEEN")
    return len(data[0].split()) if data and data[0] else 0


# ----------------------------------------------------------------------------- the work


def transform_exchange(exchange: Exchange) -> None:
    exchange.headers.set("X-Forwarded-By", "flowrt")
    exchange.properties["customer"] = exchange.headers.get("From") or ""
    exchange.set_text(exchange.text.replace("invoice", "INVOICE"))


def transform_message(message: email.message.Message) -> None:
    message["X-Forwarded-By"] = "flowrt"
    customer = message.get("From") or ""
    payload = message.get_payload(decode=True)
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    message.set_payload(text.replace("invoice", "INVOICE"))
    assert customer


def sender(port: int, count: int, poll: Any, protection: str = "off") -> Sender:
    return Sender(
        adapter="mail",
        protocol="imap",
        connection=Connection(
            address=Address("127.0.0.1", port, True),
            proxy=Proxy("internet"),
            protection=protection,
            auth=Auth("plain", "bench"),
            timeout=dt.timedelta(seconds=30),
            allow_plaintext_auth=True,
        ),
        folder="INBOX",
        selection="unread",
        max_messages=count,
        post_process=PostProcess("mark-read"),
        poll=poll,
        attachments="keep",
        headers=None,
        keep_original=False,
        pos=Pos("bench.flow", 1, 1),
        positions={},
    )


def endpoint(s: Sender, user: MailboxUser, tls: ssl.SSLContext | None = None) -> MailEndpoint:
    login = MailLogin(user.address, Secret(user.password), None, "bench")
    return MailEndpoint.for_sender(s, login=login, tls=tls)


async def run_flowrt(
    port: int,
    user: MailboxUser,
    count: int,
    *,
    protection: str = "off",
    tls: ssl.SSLContext | None = None,
) -> int:
    """Poll ``count`` mails once; ``protection`` (with ``tls`` trusting the server) as a
    flow's ``protection`` setting: ``starttls-mandatory`` or ``imaps`` (then ``port`` is the
    IMAPS port)."""
    handled = 0

    async def handle(exchange: Exchange) -> bool:
        nonlocal handled
        transform_exchange(exchange)
        handled += 1
        return True

    s = sender(port, count, PollEvery(dt.timedelta(minutes=1)), protection)
    with (
        tempfile.TemporaryDirectory(prefix="flowrt-bench-") as folder,
        StateDB(Path(folder) / "state.sqlite") as state,
    ):
        await MailPoller(s, endpoint(s, user, tls), handle, state).poll_once()
    return handled


async def _plain_session(port: int, user: MailboxUser) -> aioimaplib.IMAP4:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=30)
    await client.wait_hello_from_server()
    await client.login(user.address, user.password)
    await client.select("INBOX")
    return client


def _uids(response: Any) -> list[str]:
    return [uid for line in response.lines[:-1] for uid in line.decode().split() if uid.isdigit()]


async def run_plain_loop(port: int, user: MailboxUser, count: int) -> int:
    client = await _plain_session(port, user)
    done = 0
    for uid in _uids(await client.uid_search("UNSEEN", charset=None))[:count]:
        response = await client.uid("fetch", uid, "(BODY.PEEK[])")
        message = email.message_from_bytes(bytes(response.lines[1]))
        transform_message(message)
        await client.uid("store", uid, "+FLAGS", "(\\Seen)")
        done += 1
    await client.logout()
    return done


async def run_plain_batch(port: int, user: MailboxUser, count: int) -> int:
    client = await _plain_session(port, user)
    uids = _uids(await client.uid_search("UNSEEN", charset=None))[:count]
    response = await client.uid("fetch", f"{uids[0]}:{uids[-1]}", "(UID BODY.PEEK[])")
    done = 0
    for line in response.lines:
        if isinstance(line, bytearray):
            transform_message(email.message_from_bytes(bytes(line)))
            done += 1
    await client.uid("store", f"{uids[0]}:{uids[-1]}", "+FLAGS.SILENT", "(\\Seen)")
    await client.logout()
    return done


async def timed(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    started = time.perf_counter()
    done = await run()
    return time.perf_counter() - started, done


# ----------------------------------------------------------------------------- IDLE


async def idle_latencies(dovecot: DovecotServer, user: MailboxUser, mails: int) -> list[float]:
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def handle(exchange: Exchange) -> bool:
        arrived.put_nowait(time.perf_counter())
        return True

    s = sender(dovecot.imap_port, 100, PollIdle())
    latencies: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="flowrt-bench-") as folder,
        StateDB(Path(folder) / "state.sqlite") as state,
    ):
        poller = MailPoller(s, endpoint(s, user), handle, state)
        stop = asyncio.Event()
        task = asyncio.ensure_future(run_on_schedule(poller, stop))
        appender = imaplib.IMAP4("127.0.0.1", dovecot.imap_port)
        appender.login(user.address, user.password)
        try:
            while poller.health.last_success is None:  # connected, first poll done
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # IDLE is on
            for i in range(mails):
                sent = await asyncio.to_thread(_append, appender, mail(100_000 + i))
                got = await asyncio.wait_for(arrived.get(), 10)
                latencies.append((got - sent) * 1000)
                await asyncio.sleep(0.05)  # back in IDLE after post-processing
        finally:
            appender.logout()
            stop.set()
            await asyncio.wait_for(task, 10)
    return latencies


async def raw_idle_latencies(dovecot: DovecotServer, user: MailboxUser, mails: int) -> list[float]:
    """The server's own floor: APPEND to ``* N EXISTS`` on a bare socket that enters IDLE
    afresh for each mail, as any client must after it fetched and marked the last one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", dovecot.imap_port)

    async def until(prefix: bytes) -> bytes:
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if line.startswith(prefix) or not line:
                return line

    await reader.readline()
    writer.write(f'a LOGIN "{user.address}" "{user.password}"\r\nb SELECT INBOX\r\n'.encode())
    await until(b"b ")
    appender = imaplib.IMAP4("127.0.0.1", dovecot.imap_port)
    appender.login(user.address, user.password)
    latencies: list[float] = []
    try:
        for i in range(mails):
            writer.write(b"i IDLE\r\n")
            await until(b"+")
            sent = await asyncio.to_thread(_append, appender, mail(200_000 + i))
            while not (await until(b"*")).rstrip().endswith(b"EXISTS"):
                pass
            latencies.append((time.perf_counter() - sent) * 1000)
            writer.write(b"DONE\r\n")
            await until(b"i ")
            await asyncio.sleep(0.05)
    finally:
        appender.logout()
        writer.close()
    return latencies


def _append(client: imaplib.IMAP4, raw: bytes) -> float:
    started = time.perf_counter()  # before the APPEND goes out: the latency includes it
    client.append("INBOX", None, None, raw)
    return started


# ----------------------------------------------------------------------------- main


async def main_async(opts: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)
    with DovecotServer(tls=False, users={}) as dovecot:
        user = dovecot.new_user("bench")
        await asyncio.to_thread(fill, dovecot, user, opts.mails)
        contenders: dict[str, Callable[[], Awaitable[int]]] = {
            "flowrt_rate": lambda: run_flowrt(dovecot.imap_port, user, opts.mails),
            "aioimaplib_loop_rate": lambda: run_plain_loop(dovecot.imap_port, user, opts.mails),
            "aioimaplib_batch_rate": lambda: run_plain_batch(dovecot.imap_port, user, opts.mails),
        }
        best: dict[str, float] = {}
        for _ in range(opts.rounds):
            for name, run in contenders.items():
                await asyncio.to_thread(reset_seen, dovecot, user)
                try:
                    seconds, done = await timed(run)
                except Exception as exc:  # a contender that breaks is reported, not fatal
                    emit(name, 0.0, "mails/s", error=f"{type(exc).__name__}: {exc}"[:300])
                    continue
                seen = await asyncio.to_thread(count_seen, dovecot, user)
                if done != opts.mails or seen != opts.mails:
                    emit(name, 0.0, "mails/s", error=f"processed {done}, marked {seen}")
                    continue
                best[name] = max(best.get(name, 0.0), done / seconds)
        for name, rate in best.items():
            emit(name, round(rate, 1), "mails/s", mails=opts.mails, rounds=opts.rounds)
        if "flowrt_rate" in best:
            for ref, figure in (
                ("aioimaplib_loop_rate", "flowrt_vs_aioimaplib_loop"),
                ("aioimaplib_batch_rate", "flowrt_vs_aioimaplib_batch"),
            ):
                if ref in best:
                    emit(figure, round(best["flowrt_rate"] / best[ref], 2), "ratio")
        floor = await raw_idle_latencies(dovecot, dovecot.new_user("raw"), opts.idle_mails)
        latencies = await idle_latencies(dovecot, dovecot.new_user("idle"), opts.idle_mails)
        n = len(latencies)
        emit("idle_latency_median", round(statistics.median(latencies), 2), "ms", mails=n)
        emit("idle_latency_p90", round(statistics.quantiles(latencies, n=10)[-1], 2), "ms", mails=n)
        emit("dovecot_idle_floor_median", round(statistics.median(floor), 2), "ms", mails=n)
        added = statistics.median(latencies) - statistics.median(floor)
        emit("idle_latency_added_by_flowrt", round(added, 2), "ms", mails=n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-mails", type=int, default=20)
    opts = parser.parse_args()
    asyncio.run(main_async(opts))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
