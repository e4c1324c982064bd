"""Peak memory of a flow forwarding a mail with a large attachment, as the process's RSS.

A private Dovecot (STARTTLS, trusted through the tenant keystore) holds one mail with an
``--megabytes`` attachment (25 MB by default, base64 on the wire); one flow reads it and
forwards it (``attachments from-message``) to Postfix's ``smtp-sink``; ``flowrt run --once``
does the poll. Figures, one JSON line each:

- ``forward_rss_growth_mb``: the process's peak RSS (``ru_maxrss``) with the mail, less the
  same run over the empty mailbox (what starting and polling cost without it);
  ``growth_vs_attachment``: that over the attachment's size (the goal is 2 or less);
- reference, same run: a plain script that logs in with ``imaplib``, fetches the same mail
  and reads the attachment with ``email`` (``BytesParser(policy=default)``,
  ``get_content()``), the same way less its run without the fetch. It only reads; the flow
  also composes and sends.

Usage: ``python benchmarks/forward_memory.py [--megabytes 25] [--code DIR]``; ``--code``
runs ``flowrt`` from another checkout (before/after). Needs Dovecot and Postfix
(smtp-sink) and root (Dovecot). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.servers

from flowrt.security import edit_credentials, edit_keystore  # noqa: E402
from flowrt.security.credentials import UserCredential  # noqa: E402
from flowrt.security.secret import Secret  # noqa: E402
from flowrt.security.setup import init_tenant  # noqa: E402
from flowrt.tenant import Tenant  # noqa: E402
from tests.servers import DovecotServer, TestCA  # noqa: E402
from tests.servers.postfix import SmtpSink  # noqa: E402

MB = 1024 * 1024
USER = "big@forward.example"

FLOW = """flow big {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "in"
        post-process  mark-read
        timeout       60s
    }}
    receiver mail sink {{
        address       "127.0.0.1:{sink}"
        protection    off
        auth          none
        from          "flowrt@example.com"
        to            "archive@example.com"
        subject       "Fwd: ${{header.Subject}}"
        attachments   from-message
        timeout       60s
    }}
}}
"""

# The reference: what a plain script needs to read the same mail (argv: fetch or not).
PLAIN = r"""
import email.policy, imaplib, ssl, sys
from email.parser import BytesParser
port, cafile, user, password, fetch = sys.argv[1:6]
client = imaplib.IMAP4("127.0.0.1", int(port))
client.starttls(ssl.create_default_context(cafile=cafile))
client.login(user, password)
client.select("INBOX", readonly=True)
if fetch == "yes":
    _, data = client.fetch(b"1", "(BODY.PEEK[])")
    message = BytesParser(policy=email.policy.default).parsebytes(data[0][1])
    (part,) = message.iter_attachments()
    content = part.get_content()
client.logout()
"""

# Runs argv[1:], then prints its peak RSS in KiB (exits 1 when it failed).
LAUNCH = r"""
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
if done.returncode:
    print(done.stderr.decode(errors="replace"))
    sys.exit(1)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def big_mail(megabytes: int) -> bytes:
    payload = base64.encodebytes(os.urandom(megabytes * MB)).replace(b"\n", b"\r\n")
    return (
        b"From: Plant <plant@example.com>\r\nTo: accounting@example.com\r\n"
        b"Subject: big\r\nMessage-ID: <big@forward.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
        b'Content-Type: application/pdf; name="big.pdf"\r\n'
        b'Content-Disposition: attachment; filename="big.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"--b--\r\n"
    )


def peak_rss(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, str]:
    """Run ``argv``; its peak RSS in MB, and its stdout. Through a small launcher: a child's
    ``ru_maxrss`` counts what it was before its exec, a copy of this process (which holds
    the big mail)."""
    out = subprocess.run(
        [sys.executable, "-c", LAUNCH, *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = out.stdout.splitlines()
    if out.returncode or not lines:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed:\n{out.stdout}{out.stderr}")
    return int(lines[-1]) / 1024, "\n".join(lines[:-1])


def run_once(tenant: Path, code: Path) -> float:
    """``flowrt run --once`` (of the checkout ``code``): its peak RSS in MB. It exits 1
    when a mail could not be forwarded."""
    cli = [sys.executable, "-m", "flowrt.cli.main", "--tenant", str(tenant), "run", "--once"]
    # run in ``code``: ``python -m`` puts the working directory first on the path
    return peak_rss(cli, {**os.environ, "PYTHONPATH": str(code)}, cwd=code)[0]


def plain(dovecot: DovecotServer, cafile: Path, password: str, fetch: bool) -> float:
    argv = [str(dovecot.imap_port), str(cafile), USER, password, "yes" if fetch else "no"]
    return peak_rss([sys.executable, "-c", PLAIN, *argv])[0]


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    line = {"benchmark": "forward_memory", "figure": figure, "value": round(value, 1)}
    print(json.dumps({**line, "unit": unit, **extra}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=25)
    parser.add_argument("--code", type=Path, default=ROOT, help="flowrt checkout to run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flowrt-forward-"))
    os.chmod(work, 0o755)
    ca = TestCA()
    cafile = work / "ca.pem"
    cafile.write_bytes(ca.cert_pem)
    password = f"pw-{os.urandom(6).hex()}"
    dovecot = DovecotServer(
        ca=ca.new_intermediate(), users={USER: password}, workdir=work / "dovecot"
    )
    sink = SmtpSink(workdir=work / "sink")
    try:
        dovecot.start()
        sink.start()
        tenant = work / "tenant"
        init_tenant(tenant)
        from cryptography import x509

        with edit_keystore(Tenant(tenant)) as keystore:
            keystore.add_certificates("test-root", [x509.load_pem_x509_certificate(ca.cert_pem)])
        with edit_credentials(Tenant(tenant)) as store:
            store.put(UserCredential("in", USER, Secret(password)))
        flow = work / "big.flow"
        flow.write_text(FLOW.format(imap=dovecot.imap_port, sink=sink.port))
        subprocess.run(
            [sys.executable, "-m", "flowrt.cli.main", "--tenant", str(tenant), "deploy", str(flow)],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
        )
        empty = run_once(tenant, args.code)
        plain_empty = plain(dovecot, cafile, password, fetch=False)
        raw = big_mail(args.megabytes)
        dovecot.append(USER, "INBOX", raw)
        plain_full = plain(dovecot, cafile, password, fetch=True)
        full = run_once(tenant, args.code)
        label = {
            "attachment_mb": args.megabytes,
            "mail_mb": round(len(raw) / MB, 1),
            "code": str(args.code),
        }
        growth = full - empty
        reference = plain_full - plain_empty
        emit(
            "forward_rss_growth_mb",
            growth,
            "MB",
            **label,
            peak_rss_mb=round(full, 1),
            empty_mailbox_peak_rss_mb=round(empty, 1),
            reference_plain_read_mb=round(reference, 1),
        )
        emit("growth_vs_attachment", growth / args.megabytes, "x", **label)
        emit("reference_plain_read_vs_attachment", reference / args.megabytes, "x", **label)
    finally:
        sink.stop()
        dovecot.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
