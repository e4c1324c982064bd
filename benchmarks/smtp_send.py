"""SMTP send rate into Postfix' ``smtp-sink`` on loopback, one JSON line per figure.

Three senders of 2 KB mails, measured in the same run against the same sink:

- ``flowrt_rate``: a ``receiver mail`` (protection off, auth none) driven the way the engine
  drives it: ``deliver(exchange)`` per message, which composes the mail (MailComposer) and
  sends it, with ``--concurrency`` messages in flight (the pool's per-target limit), so the
  pool's sessions carry transactions side by side;
- ``aiosmtplib_loop_rate``: the plain reference: one aiosmtplib connection, one
  ``send_message`` per mail, each mail built as an ``EmailMessage`` in the loop;
- ``smtp_source_rate``: Postfix' C load generator, ``smtp-source -s CONCURRENCY -m N -l 2048``
  (including its process start);
- ``flowrt_vs_aiosmtplib_loop`` (the goal: at least 1.5), ``flowrt_vs_smtp_source``.

And to show where the time goes:

- ``compose_us_per_mail``: MailComposer.compose alone, per mail;
- ``flowrt_send_only_rate``: the receiver sending already composed mails (``send``), same
  concurrency: the adapter without composing;
- ``aiosmtplib_prebuilt_rate``: the plain loop with the messages built before the clock
  starts (``send_message`` still flattens each one);
- ``flowrt_send_only_vs_aiosmtplib_prebuilt``: the adapter's SMTP part against that loop.

Usage: ``python benchmarks/smtp_send.py [--mails 2000] [--concurrency 4] [--rounds 3]``;
best of ``rounds`` per sender. Needs the ``postfix`` package (smtp-sink, smtp-source).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import email.message
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosmtplib
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.servers (the smtp-sink fixture)

from flowrt.adapters.mail.smtp.receiver import SmtpReceiver  # noqa: E402
from flowrt.dsl import parse_text  # noqa: E402
from flowrt.dsl.model import Receiver  # noqa: E402
from flowrt.engine.exchange import Exchange, Headers  # noqa: E402
from flowrt.security import TenantSecurity  # noqa: E402
from flowrt.security.setup import init_tenant  # noqa: E402
from flowrt.tenant import Tenant  # noqa: E402
from tests.servers.postfix import SmtpSink, run_smtp_source  # noqa: E402

SIZE = 2048
SENDER = "integration@example.com"
RECIPIENT = "accounting@example.com"


def body_text(i: int) -> str:
    line = f"mail {i:06d} " + "x" * 60 + "\n"
    return (line * (SIZE // len(line) + 1))[: SIZE - 400]  # about 2 KB with the headers


def receiver_block(port: int, concurrency: int) -> Receiver:
    text = f"""flow bench {{
  sender mail {{
    protocol imap
    address "127.0.0.1:143"
    auth plain credential "x"
  }}
  receiver mail sink {{
    address "127.0.0.1:{port}"
    protection off
    auth none
    from "{SENDER}"
    to "{RECIPIENT}"
    subject "Fwd: ${{header.Subject}}"
  }}
}}
"""
    result = parse_text(text, "bench.flow")
    assert result.ok, result.render()
    return result.flows[0].receivers[0]


async def timed(run: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


def exchanges(mails: int) -> list[Exchange]:
    return [
        Exchange(body=body_text(i).encode(), headers=Headers([("Subject", f"Invoice {i}")]))
        for i in range(mails)
    ]


async def flowrt_round(
    receiver: SmtpReceiver, mails: int, concurrency: int, *, precomposed: bool = False
) -> float:
    todo = exchanges(mails)
    composed = [receiver.composer.compose(e) for e in todo] if precomposed else []
    queue = iter(range(mails))

    async def worker() -> None:
        for i in queue:  # shared iterator: each worker takes the next message
            if precomposed:
                await receiver.send(composed[i], todo[i])
            else:
                await receiver.deliver(todo[i])

    async def run() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    return await timed(run)


def build_message(i: int) -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = f"Fwd: Invoice {i}"
    message.set_content(body_text(i))
    return message


async def aiosmtplib_round(port: int, mails: int, *, prebuilt: bool) -> float:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()
    messages = [build_message(i) for i in range(mails)] if prebuilt else []

    async def run() -> None:
        for i in range(mails):
            await smtp.send_message(messages[i] if prebuilt else build_message(i))

    try:
        return await timed(run)
    finally:
        await smtp.quit()


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    record = {"benchmark": "smtp_send", "figure": figure, "value": value, "unit": unit}
    print(json.dumps({**record, **extra}), flush=True)


async def main_async(opts: argparse.Namespace) -> None:
    # The runtime logs at info; the receiver's per-mail events are debug.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    os.environ.pop("FLOWRT_MASTER_KEY", None)
    with tempfile.TemporaryDirectory(prefix="flowrt-bench-") as folder, SmtpSink() as sink:
        init_tenant(Path(folder) / "tenant", environ={})
        security = TenantSecurity.open(Tenant(Path(folder) / "tenant"))
        receiver = SmtpReceiver(
            receiver_block(sink.port, opts.concurrency),
            security,
            per_target=opts.concurrency,
        )
        await flowrt_round(receiver, 200, opts.concurrency)  # warm-up: sessions, caches
        best: dict[str, float] = {}
        n, concurrency, port = opts.mails, opts.concurrency, sink.port
        for _ in range(opts.rounds):
            for name, round_ in (
                ("flowrt", lambda: flowrt_round(receiver, n, concurrency)),
                ("aiosmtplib_loop", lambda: aiosmtplib_round(port, n, prebuilt=False)),
                (
                    "flowrt_send_only",
                    lambda: flowrt_round(receiver, n, concurrency, precomposed=True),
                ),
                ("aiosmtplib_prebuilt", lambda: aiosmtplib_round(port, n, prebuilt=True)),
            ):
                seconds = await round_()
                best[name] = min(best.get(name, seconds), seconds)
            source = run_smtp_source(
                sink.port,
                messages=opts.mails,
                sessions=opts.concurrency,
                size=SIZE,
                sender=SENDER,
                recipient=RECIPIENT,
            )
            best["smtp_source"] = min(best.get("smtp_source", source.seconds), source.seconds)
        sessions = receiver.pool.stats.opened
        await receiver.aclose()
        todo = exchanges(n)
        started = time.perf_counter()
        for exchange in todo:
            receiver.composer.compose(exchange)
        compose_us = (time.perf_counter() - started) / n * 1e6

    common = {"mails": opts.mails, "size": SIZE, "concurrency": opts.concurrency}
    rates = {name: opts.mails / seconds for name, seconds in best.items()}
    for name, rate in rates.items():
        extra = {"sessions_opened": sessions} if name == "flowrt" else {}
        emit(f"{name}_rate", round(rate), "mails/s", **common, **extra)
    emit(
        "flowrt_vs_aiosmtplib_loop",
        round(rates["flowrt"] / rates["aiosmtplib_loop"], 2),
        "x",
        goal=1.5,
        **common,
    )
    emit("flowrt_vs_smtp_source", round(rates["flowrt"] / rates["smtp_source"], 2), "x", **common)
    emit("compose_us_per_mail", round(compose_us), "us", **common)
    emit(
        "flowrt_send_only_vs_aiosmtplib_prebuilt",
        round(rates["flowrt_send_only"] / rates["aiosmtplib_prebuilt"], 2),
        "x",
        **common,
    )


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--mails", type=int, default=2000)
    args.add_argument("--concurrency", type=int, default=4)
    args.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(args.parse_args()))


if __name__ == "__main__":
    main()
