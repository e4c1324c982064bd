"""One ``flowrt run`` with many mailboxes: what it costs and how the cost grows with N.

A private Dovecot (STARTTLS, trusted through the tenant keystore) with ``--mailboxes`` N
users and one deployed flow per mailbox, half ``poll idle``, half ``poll every 1m``, each
forwarding to Postfix's ``smtp-sink``. Figures, one JSON line each:

- ``started_s``: from starting ``flowrt run`` until every flow is STARTED in its status;
  ``idle_established_s``: until Dovecot shows every IDLE session (its process titles);
- ``rss_mb``, ``fds``: of the runtime once settled; reference: one bare Python process holding
  one STARTTLS IDLE socket per mailbox (``bare_idle_rss_mb``, ``bare_idle_fds``);
- ``idle_cpu_percent``: CPU of the runtime over ``--idle-window`` seconds with no mail (the
  ``every`` flows poll in that window); the bare IDLE process over the same window;
- ``poll_logins_peak_per_s``: the most IMAP logins Dovecot saw in one second during that
  window: the thundering herd (``every`` flows polling in step) or its absence;
- ``idle_latency_median_ms`` / ``_p99_ms``: APPEND by another client to an IDLE mailbox until
  the forwarded mail is in smtp-sink's dump (its file time), over ``--latency-mails`` mails;
  the same with a runtime running one flow (``reference``: the N = 1 figure, same run);
- ``burst_idle_mails_per_s``: every mailbox gets 10 mails at once (written into the maildirs);
  mails/s until the IDLE mailboxes' mails are all sent; ``burst_all_sent_s``: until every mail
  is sent (the ``every 1m`` flows bound it); reference: one IDLE flow given the same number
  of mails in its one mailbox;
- ``write_bytes_per_mail`` / ``db_growth_bytes_per_mail``: disk bytes the runtime wrote
  (``/proc/PID/io``) and growth of the tenant's SQLite files (MPL and state DB, with WAL) per
  mail of the burst; ``write_amplification``: write bytes over the mail's size.

Usage: ``python benchmarks/many_mailboxes.py [--mailboxes 10|100|1000] [--idle-window 60]
[--latency-mails 20] [--code DIR]``; ``--code`` runs ``flowrt`` from another checkout (for a
before/after comparison in one run of the servers). Needs Dovecot and Postfix (smtp-sink)
and root (Dovecot). Nothing is asserted; the machine may be shared, so figures are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.servers

from flowrt.security import edit_credentials, edit_keystore  # noqa: E402
from flowrt.security.credentials import UserCredential  # noqa: E402
from flowrt.security.secret import Secret  # noqa: E402
from flowrt.security.setup import init_tenant  # noqa: E402
from flowrt.tenant import Tenant  # noqa: E402
from tests.servers import DovecotServer, TestCA  # noqa: E402
from tests.servers.postfix import SmtpSink  # noqa: E402

DOMAIN = "many.example"
MAIL_SIZE = 2048
BURST = 10  # mails per mailbox in the burst

FLOW = """flow {name} {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "{name}"
        post-process  delete
        poll          {poll}
        timeout       30s
    }}
    pipeline {{
        set header "X-Flow" = "{name}"
    }}
    receiver mail sink {{
        address       "127.0.0.1:{sink}"
        protection    off
        auth          none
        from          "flowrt@example.com"
        to            "archive@example.com"
        subject       "Fwd: ${{header.Subject}}"
        timeout       30s
    }}
}}
"""

# The memory reference: one STARTTLS IDLE session per mailbox, nothing else.
BARE_IDLE = r"""
import asyncio, json, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
users = json.loads(sys.stdin.read())
ctx = ssl.create_default_context(cafile=cafile)
async def line(r):
    return await r.readline()
async def until(r, tag):
    while not (await r.readline()).startswith(tag):
        pass
async def idle(user, password):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await line(r)
    w.write(b"a STARTTLS\r\n"); await until(r, b"a ")
    await w.start_tls(ctx, server_hostname="mail.test.example")
    w.write(f"b LOGIN {user} {password}\r\n".encode()); await until(r, b"b ")
    w.write(b"c SELECT INBOX\r\n"); await until(r, b"c ")
    w.write(b"d IDLE\r\n"); await until(r, b"+")
    return r, w
async def main():
    sem = asyncio.Semaphore(50)
    async def one(u, p):
        async with sem:
            return await idle(u, p)
    held = await asyncio.gather(*(one(u, p) for u, p in users))
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def emit(figure: str, value: float | None, unit: str, **extra: object) -> None:
    record = {"benchmark": "many_mailboxes", "figure": figure, "value": value, "unit": unit}
    print(json.dumps({**record, **extra}), flush=True)


# ----------------------------------------------------------------------------- servers


class ManyUserDovecot(DovecotServer):
    """Dovecot with limits for ``capacity`` concurrent IMAP sessions and process titles that
    show which session is in IDLE."""

    def __init__(self, capacity: int, **kwargs: Any) -> None:
        self.capacity = capacity
        super().__init__(**kwargs)

    def add_users(self, users: dict[str, str]) -> None:
        # one passwd write for all users (add_user rewrites every file per call)
        self.users.update(users)
        self._write_passwd()

    def _config(self) -> str:
        n = self.capacity
        return (
            super()._config()
            + f"""
verbose_proctitle = yes
default_process_limit = {n + 200}
default_client_limit = {4 * n + 1000}
default_vsz_limit = 512M
service imap {{
  process_limit = {n + 200}
}}
"""
        )


def mail(subject: str) -> bytes:
    head = (
        f"From: Plant <plant@example.com>\r\nTo: accounting@example.com\r\n"
        f"Subject: {subject}\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@bench.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"invoice line " + b"x" * 60 + b"\r\n"
    return head + (line * (MAIL_SIZE // len(line) + 1))[: MAIL_SIZE - len(head)]


def maildir(dovecot: DovecotServer, address: str) -> Path:
    local, domain = address.split("@")
    return dovecot.mail_dir / domain / local / "Maildir"


def drop(dovecot: DovecotServer, address: str, subjects: list[str]) -> None:
    """Deliver as an MTA would: write into tmp/, rename into new/ (Dovecot sees it at once)."""
    import grp
    import pwd

    uid, gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
    box = maildir(dovecot, address)
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
        os.chown(box / sub, uid, gid)
    for subject in subjects:
        name = f"{time.time_ns()}.{os.getpid()}.{subject.replace(' ', '_')}.bench"
        tmp = box / "tmp" / name
        tmp.write_bytes(mail(subject))
        os.chown(tmp, uid, gid)
        os.replace(tmp, box / "new" / name)


class Sink:
    """smtp-sink keeping each mail as a file: the file's time is when the mail was sent."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "dump"
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o777)
        self.server = SmtpSink(
            extra_args=["-d", f"{self.dir}/%Y%m%d%H%M%S."], backlog=1024, workdir=workdir
        )
        self._seen: dict[str, tuple[str, float]] = {}

    def start(self) -> Sink:
        self.server.start()
        return self

    def close(self) -> None:
        self.server.stop()

    def scan(self) -> dict[str, tuple[str, float]]:
        """file name -> (subject, mtime) of every mail received so far."""
        for entry in os.scandir(self.dir):
            if entry.name in self._seen:
                continue
            with contextlib.suppress(OSError):
                data = Path(entry.path).read_bytes()
                found = re.search(rb"\nSubject: Fwd: ([^\r\n]*)", data)
                if found is None:
                    continue  # still being written
                self._seen[entry.name] = (found.group(1).decode(), entry.stat().st_mtime)
        return self._seen


# ----------------------------------------------------------------------------- the runtime


class Runtime:
    """A tenant with one flow per mailbox, and ``flowrt run`` on it."""

    def __init__(
        self,
        workdir: Path,
        dovecot: DovecotServer,
        ca: TestCA,
        sink: Sink,
        mailboxes: list[tuple[str, str, str]],  # (address, password, poll)
        code: Path,
    ) -> None:
        self.root = workdir / "tenant"
        self.code = code
        self.mailboxes = mailboxes
        init_tenant(self.root)
        tenant = Tenant(self.root)
        from cryptography import x509

        with edit_keystore(tenant) as keystore:
            keystore.add_certificates("test-root", [x509.load_pem_x509_certificate(ca.cert_pem)])
        with edit_credentials(tenant) as store:
            for i, (address, password, _poll) in enumerate(mailboxes):
                store.put(UserCredential(f"m{i:04d}", address, Secret(password)))
        flows = workdir / "flows"
        flows.mkdir()
        paths = []
        for i, (_address, _password, poll) in enumerate(mailboxes):
            path = flows / f"m{i:04d}.flow"
            path.write_text(
                FLOW.format(
                    name=f"m{i:04d}", imap=dovecot.imap_port, sink=sink.server.port, poll=poll
                )
            )
            paths.append(str(path))
        for start in range(0, len(paths), 200):
            self._flowrt("deploy", *paths[start : start + 200])
        self.log = workdir / "runtime.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.code), "PYTHONUNBUFFERED": "1"}

    def _flowrt(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "flowrt.cli.main", "--tenant", str(self.root), *args],
            check=True,
            env=self._env(),
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> float:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flowrt.cli.main",
                    "--tenant",
                    str(self.root),
                    "run",
                    "--log-format",
                    "json",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self._env(),
            )
        return time.monotonic()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def all_started(self) -> bool:
        try:
            status = json.loads((self.root / "runtime" / "status.json").read_text())
        except (OSError, ValueError):
            return False
        if status.get("pid") != self.pid:
            return False
        flows = status.get("flows", {})
        return len(flows) == len(self.mailboxes) and all(
            f.get("state") == "STARTED" for f in flows.values()
        )

    def db_bytes(self) -> int:
        total = 0
        for path in self.root.rglob("*"):
            if path.is_file() and re.search(r"\.(db|sqlite)(-wal|-shm)?$", path.name):
                total += path.stat().st_size
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- /proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def idle_sessions() -> int:
    """Dovecot IMAP processes of this benchmark's users whose title says IDLE."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"@{DOMAIN} " in line and " IDLE]" in line)


def logins_per_second(log: str, since: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        if "imap-login: " in line and "Login: user=<" in line and f"@{DOMAIN}" in line:
            stamp = line[:19]
            if stamp >= since:
                counts[stamp] += 1
    return counts


def wait(predicate: Any, timeout: float, poll: float = 0.05) -> float | None:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            return None
        time.sleep(poll)
    return time.monotonic() - began


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ----------------------------------------------------------------------------- phases


def idle_latency(
    dovecot: DovecotServer, sink: Sink, boxes: list[tuple[str, str, str]], count: int, tag: str
) -> list[float]:
    samples = []
    idle_boxes = [b for b in boxes if b[2] == "idle"]
    for i in range(count):
        address, password, _poll = idle_boxes[i % len(idle_boxes)]
        subject = f"latency {tag} {i}"
        with dovecot.imap(address, password=password) as client:
            client.append("INBOX", None, None, mail(subject))
            appended = time.time()
        got: dict[str, float] = {}

        def arrived(subject: str = subject, got: dict[str, float] = got) -> bool:
            for name, (seen, mtime) in sink.scan().items():
                if seen == subject:
                    got[name] = mtime
                    return True
            return False

        if wait(arrived, 30, poll=0.005) is None:
            continue
        samples.append((next(iter(got.values())) - appended) * 1000)
    return samples


def burst(
    dovecot: DovecotServer,
    sink: Sink,
    runtime: Runtime,
    boxes: list[tuple[str, str, str]],
    tag: str,
    per_box: int,
    timeout: float,
) -> dict[str, float | None]:
    before_io, before_db = write_bytes(runtime.pid), runtime.db_bytes()
    expected = {"idle": 0, "every": 0}
    began = time.time()
    for i, (address, _password, poll) in enumerate(boxes):
        kind = "idle" if poll == "idle" else "every"
        drop(dovecot, address, [f"burst {tag} {kind} {i} {j}" for j in range(per_box)])
        expected[kind] += per_box

    def done(kind: str) -> list[float]:
        prefix = f"burst {tag} {kind} "
        return [mtime for subject, mtime in sink.scan().values() if subject.startswith(prefix)]

    total = sum(expected.values())
    wait(lambda: len(done("idle")) >= expected["idle"], timeout, poll=0.1)
    idle_times = done("idle")
    wait(lambda: len(done("idle")) + len(done("every")) >= total, timeout, poll=0.2)
    every_times = done("every")
    sent = len(idle_times) + len(every_times)
    time.sleep(1.5)  # let the runtime's last MPL and state writes land
    io, db = write_bytes(runtime.pid) - before_io, runtime.db_bytes() - before_db
    return {
        "mails": total,
        "sent": sent,
        "idle_mails_per_s": (len(idle_times) / (max(idle_times) - began) if idle_times else None),
        "all_sent_s": max(idle_times + every_times) - began if sent else None,
        "every_spread_s": (
            percentile(every_times, 0.9) - percentile(every_times, 0.1) if every_times else None
        ),
        "write_bytes_per_mail": io / sent if sent else None,
        "db_growth_bytes_per_mail": db / sent if sent else None,
    }


@contextlib.contextmanager
def bare_idle(
    dovecot: DovecotServer, ca_file: Path, boxes: list[tuple[str, str, str]]
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_IDLE, str(dovecot.imap_port), str(ca_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps([[a, p] for a, p, _ in boxes]))
    proc.stdin.close()
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 600)
        if not ready or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare IDLE reference did not connect every mailbox")
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--idle-window", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--latency-mails", type=int, default=20)
    parser.add_argument("--code", type=Path, default=ROOT, help="flowrt checkout to run")
    args = parser.parse_args()
    n = args.mailboxes
    label = {"mailboxes": n, "code": str(args.code)}
    work = Path(tempfile.mkdtemp(prefix="flowrt-many-"))
    os.chmod(work, 0o755)
    ca = TestCA()
    cert = ca.new_intermediate().issue_server_cert()
    ca_file = work / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    boxes = [
        (
            f"m{i:04d}@{DOMAIN}",
            f"pw-{i}-{os.urandom(4).hex()}",
            "idle" if i % 2 == 0 else "every 1m",
        )
        for i in range(n)
    ]
    one = [(f"ref@{DOMAIN}", f"pw-ref-{os.urandom(4).hex()}", "idle")]
    # the runtime's sessions and the bare reference's, side by side
    dovecot = ManyUserDovecot(2 * n + 100, ca=ca, cert=cert, users={}, workdir=work / "dovecot")
    dovecot.add_users({a: p for a, p, _ in boxes + one})
    sink = Sink(work / "sink")
    runtimes: list[Runtime] = []
    try:
        dovecot.start()
        sink.start()

        # the reference: one flow, measured first, stopped before the N flows start
        ref = Runtime(work / "ref", dovecot, ca, sink, one, args.code)
        runtimes.append(ref)
        ref.start()
        wait(ref.all_started, 60)
        wait(lambda: idle_sessions() >= 1, 60)
        ref_latency = idle_latency(dovecot, sink, one, args.latency_mails, "ref")
        ref_burst = burst(dovecot, sink, ref, one, "ref", min(2000, BURST * ((n + 1) // 2)), 300)
        ref_rss, ref_fds = rss_mb(ref.pid), fds(ref.pid)
        ref.stop()
        emit("reference_one_flow_rss_mb", round(ref_rss, 1), "MB", **label)
        emit("reference_one_flow_fds", ref_fds, "fds", **label)

        run = Runtime(work / "run", dovecot, ca, sink, boxes, args.code)
        runtimes.append(run)
        began = run.start()
        started = wait(run.all_started, 600)
        emit("started_s", round(started, 2) if started is not None else None, "s", **label)
        idle_ok = wait(lambda: idle_sessions() >= (n + 1) // 2, 600, poll=0.2)
        established = time.monotonic() - began if idle_ok is not None else None
        emit(
            "idle_established_s",
            round(established, 2) if established else None,
            "s",
            **label,
            idle_sessions=idle_sessions(),
        )
        time.sleep(5)  # the first polls of the every flows end
        with bare_idle(dovecot, ca_file, boxes) as bare:
            time.sleep(1.1)  # the bare process's logins fall before the window
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            cpu0, bare0, t0 = cpu_seconds(run.pid), cpu_seconds(bare.pid), time.monotonic()
            time.sleep(args.idle_window)
            elapsed = time.monotonic() - t0
            cpu = (cpu_seconds(run.pid) - cpu0) / elapsed * 100
            bare_cpu = (cpu_seconds(bare.pid) - bare0) / elapsed * 100
            emit(
                "rss_mb",
                round(rss_mb(run.pid), 1),
                "MB",
                **label,
                reference_bare_idle_rss_mb=round(rss_mb(bare.pid), 1),
            )
            emit("fds", fds(run.pid), "fds", **label, reference_bare_idle_fds=fds(bare.pid))
            emit(
                "idle_cpu_percent",
                round(cpu, 2),
                "% of one core",
                **label,
                window_s=args.idle_window,
                reference_bare_idle_cpu_percent=round(bare_cpu, 2),
            )
        logins = logins_per_second(dovecot.log(), since)
        emit(
            "poll_logins_peak_per_s",
            max(logins.values(), default=0),
            "logins/s",
            **label,
            every_flows=n // 2,
            logins_in_window=sum(logins.values()),
        )

        latency = idle_latency(dovecot, sink, boxes, args.latency_mails, "n")
        if latency and ref_latency:
            emit(
                "idle_latency_median_ms",
                round(statistics.median(latency), 1),
                "ms",
                **label,
                reference_one_flow=round(statistics.median(ref_latency), 1),
            )
            emit(
                "idle_latency_p99_ms",
                round(percentile(latency, 0.99), 1),
                "ms",
                **label,
                reference_one_flow=round(percentile(ref_latency, 0.99), 1),
            )

        result = burst(dovecot, sink, run, boxes, "n", BURST, 600)
        emit(
            "burst_idle_mails_per_s",
            _round(result["idle_mails_per_s"]),
            "mails/s",
            **label,
            mails=result["mails"],
            sent=result["sent"],
            reference_one_flow=_round(ref_burst["idle_mails_per_s"]),
            reference_mails=ref_burst["mails"],
        )
        emit(
            "burst_all_sent_s",
            _round(result["all_sent_s"]),
            "s",
            **label,
            every_sent_p10_to_p90_s=_round(result["every_spread_s"]),
        )
        for key in ("write_bytes_per_mail", "db_growth_bytes_per_mail"):
            emit(
                key,
                _round(result[key]),
                "bytes",
                **label,
                reference_one_flow=_round(ref_burst[key]),
                mail_bytes=MAIL_SIZE,
            )
        if result["write_bytes_per_mail"]:
            emit(
                "write_amplification",
                round(result["write_bytes_per_mail"] / MAIL_SIZE, 1),
                "x mail size",
                **label,
            )
        run.stop()
    finally:
        for runtime in runtimes:
            runtime.stop()
        sink.close()
        dovecot.close()
        shutil.rmtree(work, ignore_errors=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


if __name__ == "__main__":
    main()
