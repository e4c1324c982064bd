"""End to end: real Dovecot (IMAP with STARTTLS, and IMAPS) -> a deployed flow on
``flowrt run`` -> Postfix' ``smtp-sink``, one JSON line per figure.

The job (as in issue 22): forward ``--mails`` unread 2 KB mails and mark them read. For each
``--in-flight`` value and each protection, a fresh tenant deploys the flow (``max-messages``
= all mails, ``poll every 1s``), ``flowrt run`` starts as a process, and the sink's counter
is watched every 2 ms:

- ``rate_start_to_last``: mails / seconds from starting ``flowrt run`` to the last arrival
  (includes Python's start, deploy load, connect, login, TLS);
- ``rate_first_to_last``: (mails - 1) / seconds from the first arrival to the last;
- ``cpu_s_per_1000``: user + system CPU seconds of the ``flowrt run`` process (start and
  stop included) per 1,000 mails; ``peak_rss_mb``: its peak resident memory.

References in the same run, on the same servers:

- ``imap_only_rate``: flowrt's poller alone (``benchmarks/imap_poll.py``'s ``flowrt_rate``:
  fetch, three steps, record, mark read), over the same protection as the flow it is
  compared with (STARTTLS, or IMAPS);
- ``smtp_only_rate``: flowrt's receiver alone (``benchmarks/smtp_send.py``'s ``flowrt_rate``,
  4 sessions);
- ``plain_script_rate``: what a user would write: imaplib fetch + smtplib send + mark,
  one mail after another, on one connection each (STARTTLS);
- ``vs_slower_part``: ``rate_first_to_last`` / min(imap_only, smtp_only) (goal 0.6);
- ``imap_only_cpu_s_per_1000`` / ``smtp_only_cpu_s_per_1000``: CPU seconds the two parts
  take per 1,000 mails; ``one_core_bound``: 1,000 / their sum, the rate that one process
  doing both parts on one core cannot pass (the parts keep their core busy; a whole flow
  adds its MPL, state and log on top); ``vs_one_core_bound``: the flow's rate against it.
- ``machine_cores_busy`` / ``runtime_cores_busy`` / ``others_cores_busy``: from the first
  arrival to the last, the cores busy on the whole machine (``/proc/stat``), in ``flowrt
  run``, and in everything else but this benchmark's watcher (Dovecot, smtp-sink): whether
  the runtime or the machine is the limit.
- ``workers_*`` (``--workers N``, 2 unless 0): the flow with ``workers N`` (in-flight 8):
  the runtime and N - 1 worker processes, each the mails of its UID partition; peak RSS
  is the largest process's.
- ``two_runtimes_*`` (``--two-runtimes IN_FLIGHT``, 8 unless 0): the same mails split into
  two folders, each forwarded by its own ``flowrt run`` of its own tenant, started together:
  what two processes sharing the work with no coordination at all reach on this machine,
  the upper bound of any design that works one mailbox from several processes.

Each figure is the median over ``--rounds``. The machine may be shared and loaded: compare
the ratios of one run, not absolute figures across runs. Nothing is asserted.

Usage: ``python benchmarks/end_to_end.py [--mails 1000|5000] [--in-flight 1,4,8,16]
[--rounds 3] [--protection starttls,imaps] [--workers 2] [--two-runtimes 8]``. Needs
dovecot-imapd and postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import imaplib
import json
import logging
import os
import resource
import signal
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.servers and the other benchmarks

from benchmarks import imap_poll, smtp_send  # noqa: E402
from flowrt.adapters.mail.smtp.receiver import SmtpReceiver  # noqa: E402
from flowrt.security import TenantSecurity  # noqa: E402
from flowrt.security.setup import init_tenant  # noqa: E402
from flowrt.tenant import Tenant  # noqa: E402
from tests.servers import DovecotServer, MailboxUser  # noqa: E402
from tests.servers.ca import TestCA  # noqa: E402
from tests.servers.postfix import SmtpSink  # noqa: E402

FLOW = """flow e2e {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{port}"
        folder        "{folder}"
        protection    {protection}
        auth          plain credential "source"
        post-process  mark-read
        poll          every 1s
        max-messages  {mails}
        in-flight     {in_flight}
        workers       {workers}
        timeout       30s
    }}
    pipeline {{
        set header "X-Forwarded-By" = "flowrt"
    }}
    receiver mail sink {{
        address       "127.0.0.1:{sink}"
        protection    off
        auth          none
        from          "integration@example.com"
        to            "accounting@example.com"
        subject       "Fwd: ${{header.Subject}}"
        timeout       30s
    }}
}}
"""


HALVES = ("INBOX", "Half")


def fill_halves(dovecot: DovecotServer, user: MailboxUser, mails: int) -> None:
    """The same mails, every other one in a second folder: two runtimes get half each."""
    with dovecot.imap(user.address, password=user.password) as client:
        client.create(HALVES[1])
        for i in range(mails):
            client.append(HALVES[i % 2], None, None, imap_poll.mail(i))


def reset_halves(dovecot: DovecotServer, user: MailboxUser) -> None:
    with dovecot.imap(user.address, password=user.password) as client:
        for folder in HALVES:
            client.select(folder)
            client.store("1:*", "-FLAGS.SILENT", "(\\Seen)")


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    record = {"benchmark": "end_to_end", "figure": figure, "value": value, "unit": unit}
    print(json.dumps({**record, **extra}), flush=True)


def cli(tenant: Path, *args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        ["flowrt", "--tenant", str(tenant), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"flowrt {' '.join(args)} failed: {done.stdout}{done.stderr}")


def make_tenant(folder: Path, ca: TestCA, user: MailboxUser, flow: str) -> Path:
    tenant = folder / "tenant"
    cli(tenant, "init")
    (folder / "ca.pem").write_bytes(ca.cert_pem)
    cli(tenant, "keystore", "add", "test-root", str(folder / "ca.pem"))
    cli(
        tenant,
        "credentials",
        "add",
        "source",
        "--user",
        user.address,
        "--password-stdin",
        stdin=user.password,
    )
    (folder / "e2e.flow").write_text(flow)
    cli(tenant, "deploy", str(folder / "e2e.flow"))
    return tenant


def flowrt_run(tenants: list[Path], sink: SmtpSink, mails: int) -> dict[str, float]:
    """Start ``flowrt run`` on each tenant at once; the figures until ``mails`` arrived."""
    base = sink.message_count()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["flowrt", "--tenant", str(tenant), "run", "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for tenant in tenants
    ]
    pids = [proc.pid for proc in procs]
    profiler = _profile(pids[0])
    first = last = 0.0
    at_first = at_last = CpuSnapshot.take(pids)
    deadline = started + 600
    while time.perf_counter() < deadline:
        count = sink.message_count() - base
        now = time.perf_counter()
        if count >= 1 and not first:
            first = now
            at_first = CpuSnapshot.take(pids)
        if count >= mails:
            last = now
            at_last = CpuSnapshot.take(pids)
            break
        if any(proc.poll() is not None for proc in procs):
            raise SystemExit("flowrt run ended early")
        time.sleep(0.002)
    cpu = rss = 0.0
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        _pid, _status, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0  # reaped by wait4
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss / 1024)
    if profiler is not None:
        profiler.wait(timeout=60)
    if not last:
        raise SystemExit(f"only {sink.message_count() - base} of {mails} mails arrived")
    window = last - first if last > first else float("nan")
    used = at_last.minus(at_first)
    return {
        "start_to_last": mails / (last - started),
        "first_to_last": (mails - 1) / window,
        "cpu_per_1000": cpu / mails * 1000,
        "rss_mb": rss,
        "machine_cores_busy": used.machine / window,
        "runtime_cores_busy": used.runtime / window,
        "others_cores_busy": (used.machine - used.runtime - used.watcher) / window,
    }


class CpuSnapshot(NamedTuple):
    """CPU seconds used so far: by the whole machine (all cores, from /proc/stat), by the
    ``flowrt run`` processes, and by this benchmark (its arrival watcher)."""

    machine: float
    runtime: float
    watcher: float

    @classmethod
    def take(cls, pids: list[int]) -> CpuSnapshot:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
        busy = sum(int(value) for i, value in enumerate(fields[:8]) if i not in (3, 4))
        runtime = 0
        for stat in _stats():  # the runtimes and their worker processes
            if int(stat[1]) in pids or int(stat[0]) in pids:  # ppid (after the name), pid
                runtime += int(stat[11]) + int(stat[12])  # utime, stime
        return cls(busy / ticks, runtime / ticks, _cpu())

    def minus(self, other: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(
            self.machine - other.machine,
            self.runtime - other.runtime,
            self.watcher - other.watcher,
        )


def _profile(pid: int) -> subprocess.Popen[bytes] | None:
    """With FLOWRT_E2E_PROFILE=<file>: py-spy samples the runtime (collapsed stacks, for
    finding the costs per mail; the figures of a profiled run are not comparable)."""
    out = os.environ.get("FLOWRT_E2E_PROFILE")
    if not out:
        return None
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "--nonblocking",
            "--pid",
            str(pid),
            "-o",
            out,
            "-f",
            "raw",
            "-r",
            "1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stats() -> list[list[str]]:
    """Every process's /proc/PID/stat fields from the state on (pid put in front)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                text = (entry / "stat").read_text()
                found.append([entry.name, *text.rsplit(")", 1)[1].split()[1:]])
    return found


def plain_script(dovecot: DovecotServer, user: MailboxUser, ca: TestCA, sink: SmtpSink) -> float:
    """The script a user would write: fetch, forward, mark; one mail after another."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    started = time.perf_counter()
    imap = imaplib.IMAP4("127.0.0.1", dovecot.imap_port)
    imap.starttls(context)
    imap.login(user.address, user.password)
    imap.select("INBOX")
    smtp = smtplib.SMTP("127.0.0.1", sink.port)
    _, data = imap.uid("SEARCH", "UNSEEN")
    uids = data[0].split()
    for uid in uids:
        _, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
        raw = parts[0][1]
        smtp.sendmail("integration@example.com", ["accounting@example.com"], raw)
        imap.uid("STORE", uid, "+FLAGS", "(\\Seen)")
    smtp.quit()
    imap.logout()
    return len(uids) / (time.perf_counter() - started)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def smtp_only(sink: SmtpSink, mails: int) -> tuple[float, float]:
    """mails/s, and CPU seconds per 1,000 mails, of flowrt's receiver alone."""
    with tempfile.TemporaryDirectory(prefix="flowrt-bench-") as folder:
        init_tenant(Path(folder) / "tenant", environ={})
        security = TenantSecurity.open(Tenant(Path(folder) / "tenant"))
        receiver = SmtpReceiver(smtp_send.receiver_block(sink.port, 4), security, per_target=4)
        try:
            await smtp_send.flowrt_round(receiver, 50, 4)  # sessions open, as in a flow
            cpu = _cpu()
            seconds = await smtp_send.flowrt_round(receiver, mails, 4)
            cpu = _cpu() - cpu
        finally:
            await receiver.aclose()
    return mails / seconds, cpu / mails * 1000


async def imap_only(
    dovecot: DovecotServer, user: MailboxUser, mails: int, protection: str, ca: TestCA
) -> tuple[float, float]:
    """mails/s, and CPU seconds per 1,000 mails, of flowrt's poller alone, over the same
    protection as the flow it is compared with."""
    port = dovecot.imaps_port if protection == "imaps" else dovecot.imap_port
    mode = "imaps" if protection == "imaps" else "starttls-mandatory"
    tls = ssl.create_default_context(cadata=ca.cert_pem.decode())
    cpu = _cpu()
    seconds, done = await imap_poll.timed(
        lambda: imap_poll.run_flowrt(port, user, mails, protection=mode, tls=tls)
    )
    return done / seconds, (_cpu() - cpu) / done * 1000


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    args.add_argument("--mails", type=int, default=1000, choices=(1000, 5000))
    args.add_argument("--in-flight", default="1,4,8,16")
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--protection", default="starttls,imaps")
    args.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also run the flow with this `workers N` (and in-flight 8); 0 or 1: not",
    )
    args.add_argument(
        "--two-runtimes",
        type=int,
        default=8,
        metavar="IN_FLIGHT",
        help="also run two runtimes on half the mails each, with this in-flight (0: not)",
    )
    opts = args.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)
    os.environ.pop("FLOWRT_MASTER_KEY", None)
    in_flight = [int(n) for n in opts.in_flight.split(",")]
    protections = opts.protection.split(",")
    n = opts.mails
    common = {"mails": n, "rounds": opts.rounds}
    ca = TestCA()
    with DovecotServer(ca=ca.new_intermediate(), users={}) as dovecot, SmtpSink() as sink:
        user = dovecot.new_user("e2e")
        imap_poll.fill(dovecot, user, n)
        split = dovecot.new_user("e2e-split")
        if opts.two_runtimes:
            fill_halves(dovecot, split, n)
        figures: dict[str, list[float]] = {}
        for _ in range(opts.rounds):
            imap_poll.reset_seen(dovecot, user)
            parts = {"smtp_only": lambda: smtp_only(sink, n)}
            for protection in protections:
                parts[f"imap_only/{protection}"] = functools.partial(
                    imap_only, dovecot, user, n, protection, ca
                )
            for part, measure in parts.items():
                imap_poll.reset_seen(dovecot, user)
                rate, cpu = asyncio.run(measure())
                figures.setdefault(part, []).append(rate)
                figures.setdefault(f"{part}/cpu_per_1000", []).append(cpu)
            imap_poll.reset_seen(dovecot, user)
            figures.setdefault("plain", []).append(plain_script(dovecot, user, ca, sink))
            for protection in protections:
                port = dovecot.imaps_port if protection == "imaps" else dovecot.imap_port
                mode = "imaps" if protection == "imaps" else "starttls-mandatory"
                flow = functools.partial(
                    FLOW.format, port=port, protection=mode, mails=n, sink=sink.port
                )

                def measure(key: str, flows: list[tuple[MailboxUser, str]]) -> None:
                    """Each flow on a tenant of its own, their runtimes started together."""
                    with tempfile.TemporaryDirectory(prefix="flowrt-e2e-") as folder:
                        tenants = []
                        for index, (owner, text) in enumerate(flows):
                            (Path(folder) / str(index)).mkdir()
                            tenants.append(make_tenant(Path(folder) / str(index), ca, owner, text))
                        got = flowrt_run(tenants, sink, n)
                    for name, value in got.items():
                        figures.setdefault(f"{key}/{name}", []).append(value)

                for limit in in_flight:
                    imap_poll.reset_seen(dovecot, user)
                    text = flow(folder="INBOX", in_flight=limit, workers=1)
                    measure(f"{protection}/{limit}", [(user, text)])
                if opts.two_runtimes:
                    reset_halves(dovecot, split)
                    halves = [
                        (split, flow(folder=half, in_flight=opts.two_runtimes, workers=1))
                        for half in HALVES
                    ]
                    measure(f"{protection}/two", halves)
                if opts.workers > 1:
                    imap_poll.reset_seen(dovecot, user)
                    text = flow(folder="INBOX", in_flight=8, workers=opts.workers)
                    measure(f"{protection}/workers", [(user, text)])
        med = {name: statistics.median(values) for name, values in figures.items()}
        emit("smtp_only_rate", round(med["smtp_only"]), "mails/s", **common)
        emit("smtp_only_cpu_s_per_1000", round(med["smtp_only/cpu_per_1000"], 3), "s", **common)
        emit("plain_script_rate", round(med["plain"]), "mails/s", **common)
        slower: dict[str, float] = {}
        one_core: dict[str, float] = {}
        for protection in protections:
            part = f"imap_only/{protection}"
            extra = {**common, "protection": protection}
            emit("imap_only_rate", round(med[part]), "mails/s", **extra)
            emit("imap_only_cpu_s_per_1000", round(med[f"{part}/cpu_per_1000"], 3), "s", **extra)
            slower[protection] = min(med[part], med["smtp_only"])
            # both parts keep one core busy: one process doing both cannot pass this rate
            cpu = med[f"{part}/cpu_per_1000"] + med["smtp_only/cpu_per_1000"]
            one_core[protection] = 1000 / cpu
            emit("one_core_bound", round(one_core[protection]), "mails/s", **extra)
            emit(
                "one_core_bound_vs_slower_part",
                round(one_core[protection] / slower[protection], 2),
                "ratio",
                **extra,
            )
        for protection in protections:
            for limit in in_flight:
                key = f"{protection}/{limit}"
                extra = {**common, "protection": protection, "in_flight": limit}
                emit("rate_start_to_last", round(med[f"{key}/start_to_last"]), "mails/s", **extra)
                rate = med[f"{key}/first_to_last"]
                emit("rate_first_to_last", round(rate), "mails/s", **extra)
                emit(
                    "vs_slower_part",
                    round(rate / slower[protection], 2),
                    "ratio",
                    goal=0.6,
                    **extra,
                )
                emit("vs_one_core_bound", round(rate / one_core[protection], 2), "ratio", **extra)
                emit("vs_plain_script", round(rate / med["plain"], 2), "ratio", **extra)
                emit("cpu_s_per_1000", round(med[f"{key}/cpu_per_1000"], 2), "s", **extra)
                emit("peak_rss_mb", round(med[f"{key}/rss_mb"], 1), "MB", **extra)
                for share in ("machine", "runtime", "others"):
                    busy = med[f"{key}/{share}_cores_busy"]
                    emit(f"{share}_cores_busy", round(busy, 2), "cores", **extra)
            if opts.workers > 1:
                extra = {**common, "protection": protection, "in_flight": 8}
                extra["workers"] = opts.workers
                emit_run("workers", med, f"{protection}/workers", slower[protection], extra)
            if opts.two_runtimes:
                extra = {**common, "protection": protection, "in_flight": opts.two_runtimes}
                emit_run("two_runtimes", med, f"{protection}/two", slower[protection], extra)


def emit_run(
    prefix: str, med: dict[str, float], key: str, slower: float, extra: dict[str, object]
) -> None:
    """The figures of one kind of extra run (``workers_*``, ``two_runtimes_*``)."""
    rate = med[f"{key}/first_to_last"]
    emit(f"{prefix}_rate_first_to_last", round(rate), "mails/s", **extra)
    emit(f"{prefix}_rate_start_to_last", round(med[f"{key}/start_to_last"]), "mails/s", **extra)
    emit(f"{prefix}_vs_slower_part", round(rate / slower, 2), "ratio", goal=0.6, **extra)
    emit(f"{prefix}_cpu_s_per_1000", round(med[f"{key}/cpu_per_1000"], 2), "s", **extra)
    busy = med[f"{key}/machine_cores_busy"]
    emit(f"{prefix}_machine_cores_busy", round(busy, 2), "cores", **extra)
    emit(f"{prefix}_peak_rss_mb", round(med[f"{key}/rss_mb"], 1), "MB", **extra)


if __name__ == "__main__":
    main()
