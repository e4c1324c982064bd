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

And for a 200 KB multipart/alternative + related mail (text, HTML, two cid: images), read
by ``mail_to_exchange`` and forwarded with ``body-type auto`` (``--rich-mails`` of them):

- ``rich_compose_us_per_mail``: composing it (alternative, related, images base64);
- ``rich_flowrt_rate``: ``deliver`` (compose and send), same concurrency;
- ``rich_aiosmtplib_loop_rate``: one aiosmtplib connection sending the same bytes;
- ``rich_flowrt_vs_aiosmtplib_loop``.

Usage: ``python benchmarks/smtp_send.py [--mails 2000] [--concurrency 4] [--rounds 3]``;
best of ``rounds`` per sender. Needs the ``postfix`` package (smtp-sink, smtp-source).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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

from flowrt.adapters.mail.mime.read import mail_to_exchange  # noqa: E402
from flowrt.adapters.mail.model import Receiver  # noqa: E402
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver  # noqa: E402
from flowrt.dsl import parse_text  # noqa: E402
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


def receiver_block(port: int, concurrency: int, recipient: str = "") -> Receiver:
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
    to "{recipient or RECIPIENT}"
    subject "Fwd: ${{header.Subject}}"
  }}
}}
"""
    result = parse_text(text, "bench.flow")
    assert result.ok, result.render()
    return result.flows[0].receivers[0]


def rich_mail() -> bytes:
    """About 200 KB: text, HTML and two images, as Outlook or Apple Mail send them."""
    text = "".join(f"Line {i:05d} of the report, with some words in it.\n" for i in range(400))
    html = "".join(f"<p>Line {i:05d} of the <b>report</b>.</p>\n" for i in range(500))
    html += '<img src="cid:one@bench"><img src="cid:two@bench">\n'
    image = base64.encodebytes(os.urandom(60_000)).decode()
    return (
        "From: a@example.com\nTo: b@example.com\nSubject: Rich\n"
        "Date: Mon, 3 Jun 2024 09:00:00 +0000\nMIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="alt"\n\n'
        "--alt\nContent-Type: text/plain; charset=utf-8\n\n" + text + "\n"
        '--alt\nContent-Type: multipart/related; boundary="rel"\n\n'
        "--rel\nContent-Type: text/html; charset=utf-8\n\n" + html + "\n"
        "--rel\nContent-Type: image/png\nContent-ID: <one@bench>\n"
        "Content-Transfer-Encoding: base64\n\n" + image + "\n"
        "--rel\nContent-Type: image/png\nContent-ID: <two@bench>\n"
        "Content-Transfer-Encoding: base64\n\n" + image + "\n"
        "--rel--\n\n--alt--\n"
    ).encode()


async def rich_flowrt_round(
    receiver: SmtpReceiver, todo: list[Exchange], concurrency: int
) -> float:
    queue = iter(todo)

    async def worker() -> None:
        for exchange in queue:
            await receiver.deliver(exchange)

    async def run() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    return await timed(run)


async def rich_aiosmtplib_round(port: int, data: list[bytes]) -> float:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()

    async def run() -> None:
        for message in data:
            await smtp.sendmail(SENDER, [RECIPIENT], message)

    try:
        return await timed(run)
    finally:
        await smtp.quit()


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
        source_mail = mail_to_exchange(rich_mail())
        rich = [source_mail.copy() for _ in range(opts.rich_mails)]
        rich_data = [receiver.composer.compose(e).data for e in rich]
        for _ in range(opts.rounds):
            for name, round_ in (
                ("rich_flowrt", lambda: rich_flowrt_round(receiver, rich, concurrency)),
                ("rich_aiosmtplib_loop", lambda: rich_aiosmtplib_round(port, rich_data)),
            ):
                seconds = await round_()
                best[name] = min(best.get(name, seconds), seconds)
        sessions = receiver.pool.stats.opened
        await receiver.aclose()
        todo = exchanges(n)
        started = time.perf_counter()
        for exchange in todo:
            receiver.composer.compose(exchange)
        compose_us = (time.perf_counter() - started) / n * 1e6
        started = time.perf_counter()
        for exchange in rich:
            receiver.composer.compose(exchange)
        rich_us = (time.perf_counter() - started) / len(rich) * 1e6

    common = {"mails": opts.mails, "size": SIZE, "concurrency": opts.concurrency}
    rich_common = {
        "mails": opts.rich_mails,
        "size": len(rich_data[0]),
        "concurrency": opts.concurrency,
    }
    rates = {name: opts.mails / seconds for name, seconds in best.items() if "rich" not in name}
    rich_rates = {name: opts.rich_mails / s for name, s in best.items() if "rich" in name}
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
    emit("rich_compose_us_per_mail", round(rich_us), "us", **rich_common)
    for name, rate in rich_rates.items():
        emit(f"{name}_rate", round(rate), "mails/s", **rich_common)
    emit(
        "rich_flowrt_vs_aiosmtplib_loop",
        round(rich_rates["rich_flowrt"] / rich_rates["rich_aiosmtplib_loop"], 2),
        "x",
        **rich_common,
    )


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--mails", type=int, default=2000)
    args.add_argument("--concurrency", type=int, default=4)
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--rich-mails", type=int, default=200)
    asyncio.run(main_async(args.parse_args()))


if __name__ == "__main__":
    main()
