"""Peak memory for a mail with a 25 MB attachment: read into an exchange, then composed
and written out as SMTP DATA pieces (as the sender writes them; the pieces are dropped).

Prints one JSON line per figure. The reference, measured in the same run, is the plain
stdlib way to do the same: ``BytesParser(policy=default)`` and ``get_content()`` of the
attachment, then an ``EmailMessage`` with it attached, flattened. Peaks are measured with
tracemalloc (Python allocations), each step on its own, after the input bytes exist.
"""

from __future__ import annotations

import argparse
import base64
import email.policy
import gc
import json
import os
import tracemalloc
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from flowrt.adapters.mail.mime.compose import MailComposer
from flowrt.adapters.mail.mime.read import mail_to_exchange
from flowrt.adapters.mail.smtp.data import wire_pieces
from flowrt.dsl import parse_text

MB = 1024 * 1024
FLOW = """flow memory {
    sender mail {
        protocol imap
        address "imap.example.com"
        protection imaps
        auth plain credential "in"
    }
    receiver mail out {
        address "smtp.example.com"
        protection smtps
        from "a@example.com"
        to "b@example.com"
        attachments from-message
    }
}
"""


def sample(megabytes: int) -> bytes:
    payload = base64.encodebytes(os.urandom(megabytes * MB))
    return (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
        b'Content-Type: application/pdf; name="big.pdf"\r\n'
        b'Content-Disposition: attachment; filename="big.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + payload.replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )


def peak(fn: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    tracemalloc.start()
    result = fn()
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, top / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=25)
    args = parser.parse_args()
    raw = sample(args.megabytes)
    receiver = parse_text(FLOW).flows[0].receivers[0]
    composer = MailComposer(receiver)

    exchange, read_peak = peak(lambda: mail_to_exchange(raw))

    def compose_and_write() -> int:
        mail = composer.compose(exchange)
        return sum(len(piece) for piece in wire_pieces(mail.message))

    _, compose_peak = peak(compose_and_write)
    exchange = None  # only what each step allocates counts

    def stdlib_read() -> bytes:
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
        (part,) = message.iter_attachments()
        return bytes(part.get_content())

    data, stdlib_read_peak = peak(stdlib_read)

    def stdlib_compose() -> bytes:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@x.example", "b@x.example", "s"
        message.set_content("see attached")
        message.add_attachment(data, maintype="application", subtype="pdf", filename="big.pdf")
        return message.as_bytes(policy=email.policy.SMTP)

    _, stdlib_compose_peak = peak(stdlib_compose)
    for figure, value in [
        ("read_peak_mb", read_peak),
        ("compose_peak_mb", compose_peak),
        ("stdlib_read_peak_mb", stdlib_read_peak),
        ("stdlib_compose_peak_mb", stdlib_compose_peak),
        ("read_vs_stdlib", read_peak / stdlib_read_peak),
        ("compose_vs_stdlib", compose_peak / stdlib_compose_peak),
    ]:
        print(
            json.dumps(
                {
                    "benchmark": "memory",
                    "figure": figure,
                    "value": round(value, 2),
                    "attachment_mb": args.megabytes,
                    "mail_mb": round(len(raw) / MB, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
