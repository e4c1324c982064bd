"""The end-to-end demo behind ``scripts/demo``: flows/mail.flow against real local servers.

What runs, all on 127.0.0.1 and all started fresh:
- Dovecot (the plant's IMAP mailbox and the accounting mailbox) and Postfix (SMTPS with
  AUTH, delivering to Dovecot), with certificates from a test CA;
- ``flowrt connector run``, the on-premise connector for location ``plant-1``, mapping the
  virtual host mail.plant.example:143 to Dovecot's IMAP port (STARTTLS end to end);
- a tenant with the CA in its keystore, the two mailbox credentials, the connector's token
  and the location ``plant-1``;
- ``flows/mail.flow`` deployed unchanged but for one override: the receiver's address
  ``smtp.example.com:465`` becomes a parameter with that address as its default
  (``.demo/mail.flow``), given the local Postfix's SMTPS port at deploy
  (``--params .demo/demo-params.toml``).

Then an invoice mail (and a newsletter the flow filters out) is dropped into the plant
mailbox, ``flowrt run`` is started and the flow deployed to it; the demo shows the delivered
mail, ``flowrt status``, ``flowrt mpl list`` and ``flowrt mpl show``, and stops the runtime.
Every flowrt command is printed before it runs, as you would type it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import MailStack, free_port, wait_for_port  # noqa: E402

WORK = ROOT / ".demo"
INVOICE = b"""From: Supplier Billing <billing@supplier.example>\r
To: plant@example.com\r
Subject: Invoice 2026-0815 for order 4711\r
Date: Sat, 21 Nov 2026 08:15:00 +0100\r
Message-ID: <invoice-2026-0815@supplier.example>\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary="b1"\r
\r
--b1\r
Content-Type: text/plain; charset=utf-8\r
\r
Dear customer, please find invoice 2026-0815 (EUR 1.250,00) attached.\r
--b1\r
Content-Type: application/pdf; name="invoice-2026-0815.pdf"\r
Content-Disposition: attachment; filename="invoice-2026-0815.pdf"\r
Content-Transfer-Encoding: base64\r
\r
JVBERi0xLjQKJSBkZW1vIGludm9pY2UKJSVFT0YK\r
--b1--\r
"""
NEWSLETTER = b"""From: news@supplier.example\r
To: plant@example.com\r
Subject: Our autumn newsletter\r
Message-ID: <news-1@supplier.example>\r
\r
Not an invoice: the flow's filter lets this one pass by.\r
"""


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def flowrt(*args: str, input: str | None = None, check: bool = True, quiet: bool = False) -> str:
    shown = " ".join(shlex.quote(a) for a in args)
    if not quiet:
        print(f"$ flowrt {shown}", flush=True)
    env = {**os.environ, "FLOWRT_HOME": str(WORK / "tenant")}
    result = subprocess.run(["flowrt", *args], input=input, text=True, env=env, capture_output=True)
    output = (result.stdout + result.stderr).rstrip()
    if output and not quiet:
        print("  " + output.replace("\n", "\n  "), flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `flowrt {shown}` failed with exit code {result.returncode}")
    return result.stdout


def _wait_for_runtime(timeout: float = 20.0) -> None:
    """Until the runtime wrote its first heartbeat (deploy then waits for STARTED)."""
    status = WORK / "tenant" / "runtime" / "status.json"
    deadline = time.monotonic() + timeout
    while not status.exists():
        if time.monotonic() > deadline:
            raise SystemExit("demo: the runtime did not start; see .demo/runtime.log")
        time.sleep(0.1)


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    say("starting Dovecot, Postfix and a test CA on 127.0.0.1")
    with MailStack(with_dante=False) as stack:
        dovecot, postfix = stack.dovecot, stack.postfix
        assert postfix is not None
        print(f"  dovecot imap {dovecot.imap_port}, postfix smtps {postfix.smtps_port}")
        dovecot.create_folder("plant@example.com", "Processed")
        (WORK / "root-ca.pem").write_bytes(stack.ca.cert_pem)

        say("starting the on-premise connector for location plant-1")
        token = "demo-" + os.urandom(16).hex()
        connector_port = free_port()
        config = WORK / "connector.toml"
        config.write_text(
            'location_id = "plant-1"\n'
            f'listen = "127.0.0.1:{connector_port}"\n'
            'token_env = "FLOWRT_CONNECTOR_TOKEN"\n'
            "[[mapping]]\n"
            'virtual = "mail.plant.example:143"\n'
            f'internal = "127.0.0.1:{dovecot.imap_port}"\n'
            'protocol = "tcp"\n'
        )
        print(f"$ flowrt connector run {config}   (in the background)")
        connector_log = (WORK / "connector.log").open("w")
        connector = subprocess.Popen(
            ["flowrt", "connector", "run", str(config), "--log-format", "json"],
            env={**os.environ, "FLOWRT_CONNECTOR_TOKEN": token},
            stdout=subprocess.DEVNULL,
            stderr=connector_log,
        )
        try:
            wait_for_port("127.0.0.1", connector_port, timeout=15)
            return run_flow(dovecot, postfix, token, connector_port)
        finally:
            connector.send_signal(signal.SIGTERM)
            connector.wait(timeout=10)
            connector_log.close()


def run_flow(dovecot, postfix, token: str, connector_port: int) -> int:  # type: ignore[no-untyped-def]
    say("creating the tenant")
    flowrt("init")
    flowrt("keystore", "add", "demo-root-ca", str(WORK / "root-ca.pem"))
    flowrt(
        "credentials",
        "add",
        "plant-mailbox",
        "--user",
        "plant@example.com",
        "--password-stdin",
        input=dovecot.password("plant@example.com"),
    )
    flowrt(
        "credentials",
        "add",
        "smtp-out",
        "--user",
        "accounting@example.com",
        "--password-stdin",
        input=dovecot.password("accounting@example.com"),
    )
    flowrt(
        "credentials", "add", "plant-1-token", "--user", "plant-1", "--password-stdin", input=token
    )
    flowrt(
        "locations",
        "add",
        "plant-1",
        "--proxy",
        f"127.0.0.1:{connector_port}",
        "--credential",
        "plant-1-token",
    )
    flowrt(
        "test",
        "smtp",
        f"127.0.0.1:{postfix.smtps_port}",
        "--protection",
        "smtps",
        "--auth",
        "encrypted",
        "--credential",
        "smtp-out",
    )

    say("dropping an invoice mail and a newsletter into plant@example.com")
    dovecot.append("plant@example.com", "INBOX", NEWSLETTER)
    dovecot.append("plant@example.com", "INBOX", INVOICE)

    say("starting the runtime, then deploying flows/mail.flow (receiver address a parameter)")
    print("$ flowrt run   (in the background; its JSON log goes to .demo/runtime.log)")
    env = {**os.environ, "FLOWRT_HOME": str(WORK / "tenant")}
    log = (WORK / "runtime.log").open("w")
    runtime = subprocess.Popen(
        ["flowrt", "run", "--grace", "10s"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        # flows/mail.flow stays as the design wrote it (its address a literal); the demo's
        # copy makes that address a parameter whose default is the same literal, and the
        # local Postfix comes in as the parameter's value from a file, as dev/prod would.
        demo_flow = WORK / "mail.flow"
        text = (ROOT / "flows" / "mail.flow").read_text()
        demo_flow.write_text(
            text.replace(
                '"smtp.example.com:465"', '"${param.SMTP_ADDRESS:smtp.example.com:465}"'
            )
        )
        params = WORK / "demo-params.toml"
        params.write_text(f'SMTP_ADDRESS = "127.0.0.1:{postfix.smtps_port}"\n')
        print(
            f'  {demo_flow}: address "${{param.SMTP_ADDRESS:smtp.example.com:465}}", '
            "everything else as in flows/mail.flow"
        )
        print(f"  {params}: {params.read_text().strip()}")
        _wait_for_runtime()
        flowrt("deploy", str(demo_flow), "--params", str(params))
        flowrt("params", "list")

        say("what arrived in accounting@example.com")
        arrived = dovecot.wait_for_message(
            "accounting@example.com",
            "INBOX",
            lambda m: b"Invoice 2026-0815" in m[2],
            timeout=30,
        )
        head = arrived[2].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        for line in head.splitlines():
            if line.split(":", 1)[0] in (
                "From",
                "To",
                "Subject",
                "X-Forwarded-By",
                "X-Flowrt-Message-Id",
            ):
                print("  " + line)
        processed = dovecot.messages("plant@example.com", "Processed")
        print(
            f"  plant mailbox: {len(processed)} mails archived to Processed (the invoice, "
            "forwarded; the newsletter, filtered out: the flow finished with both)"
        )
        time.sleep(1.2)  # one heartbeat, so that status shows the counts
        flowrt("status")
    finally:
        say("stopping the runtime (SIGTERM)")
        runtime.send_signal(signal.SIGTERM)
        code = runtime.wait(timeout=30)
        log.close()
        print(f"  flowrt run exited with {code}; last log line:")
        lines = (WORK / "runtime.log").read_text().strip().splitlines()
        print("  " + (lines[-1] if lines else "(none)"))

    say("the message-processing log")
    flowrt("mpl", "list")
    listing = flowrt("mpl", "list", "--format", "json", quiet=True)
    import json

    entries = json.loads(listing)
    forwarded = next(
        e for e in entries if e["correlation_id"] == "invoice-2026-0815@supplier.example"
    )
    flowrt("mpl", "show", forwarded["message_id"])
    say("demo: ok")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"(took {time.monotonic() - started:.1f} s)")
    sys.exit(code)
