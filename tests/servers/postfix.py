"""A private Postfix 3.7 instance on 127.0.0.1 delivering to Dovecot by LMTP.

Own config_directory, queue_directory and data_directory in a temporary directory, log in
a file (``maillog_file`` + the ``postlog`` service). Started as root with
``postfix -c DIR start``; as root, Postfix does not require DIR in the default main.cf's
``alternate_config_directories`` (that check applies to non-root/set-gid callers only), so
the system's /etc/postfix is never modified — on a "No configuration" install it has no
main.cf at all.

Ports (all on 127.0.0.1):

* ``smtp_port``: plain SMTP, STARTTLS offered, no AUTH, accepts mail for the local domains
  (clients from 127.0.0.0/8 are in ``mynetworks``);
* ``submission_port``: STARTTLS required before anything else, AUTH (Dovecot SASL: PLAIN,
  LOGIN, CRAM-MD5) required to send;
* ``smtps_port``: implicit TLS, AUTH required to send.

Mail for ``virtual_mailbox_domains`` goes to Dovecot's LMTP listener; recipients not in the
Dovecot user list are rejected at RCPT time with 550 (``virtual_mailbox_maps``, kept in sync
with ``DovecotServer.add_user``). Other destinations go to the ``error`` transport: this
instance never sends mail anywhere and never does DNS lookups.

Also: ``SmtpSink`` / ``run_smtp_source`` around Postfix' ``smtp-sink`` and ``smtp-source``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ._ports import free_port, ports_listening, wait_for_port
from ._proc import (
    ServerProcess,
    ServerStartError,
    log_tail,
    make_workdir,
    require_binary,
    require_root,
)
from .ca import ServerCert, TestCA
from .dovecot import DovecotServer

__all__ = [
    "DEFAULT_DOMAINS",
    "SMTP_SINK",
    "SMTP_SOURCE",
    "DeliveryFailed",
    "PostfixServer",
    "SmtpSink",
    "SmtpSourceResult",
    "run_smtp_source",
]

POSTFIX = "/usr/sbin/postfix"
POSTMAP = "/usr/sbin/postmap"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
DEFAULT_DOMAINS: tuple[str, ...] = ("example.com", "example.test", "plant.example")


class DeliveryFailed(RuntimeError):
    """Postfix bounced a message the test waited for."""


def _postfix_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postfix")
    return pw.pw_uid, pw.pw_gid


def _write_config(path: Path, text: str) -> None:
    """Write a config file with an mtime in the past.

    Postfix reads main.cf only once its mtime is at least a second or two old ("let the
    writer finish"), polling every 0.3 s; a freshly written file would delay every command
    and the master's start-up by ~2 s.
    """
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


class PostfixServer:
    """A private Postfix wired to a ``DovecotServer`` (LMTP delivery + SASL auth)."""

    host = "127.0.0.1"

    def __init__(
        self,
        dovecot: DovecotServer,
        *,
        ca: TestCA | None = None,
        cert: ServerCert | None = None,
        domains: Sequence[str] = DEFAULT_DOMAINS,
        hostname: str = "mail.test.example",
        workdir: str | Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.binary = require_binary(POSTFIX, "postfix", "Postfix")
        self.postmap = require_binary(POSTMAP, "postfix", "Postfix postmap")
        require_binary("/usr/lib/postfix/sbin/master", "postfix", "Postfix master")
        require_root("Postfix")
        self.dovecot = dovecot
        self.domains = tuple(domains)
        self.hostname = hostname
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else make_workdir("flowrt-postfix-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # Postfix daemons (uid postfix) traverse it
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "spool"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "maillog"
        self.config_dir.mkdir(exist_ok=True)
        if cert is None:
            issuer = ca or TestCA().new_intermediate()
            cert = issuer.issue_server_cert()
        self.cert = cert
        self.cert_path, self.key_path = cert.write(self.workdir / "tls", "postfix")
        self.smtp_port = self.submission_port = self.smtps_port = 0
        self._process: ServerProcess | None = None
        self._fixed_ports = False
        self._closed = False
        self.last_start_seconds: float | None = None
        self._users: dict[str, str] = {}
        _write_config(self.config_dir / "main.cf", self._main_cf())  # postmap -c reads it
        dovecot.on_users_changed(self._set_users)

    # -- properties -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive

    def ports(self) -> dict[str, int]:
        return {
            "smtp": self.smtp_port,
            "submission": self.submission_port,
            "smtps": self.smtps_port,
        }

    @property
    def pidfile(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"

    # -- recipient map -------------------------------------------------------------------

    def _set_users(self, users: dict[str, str]) -> None:
        """Rebuild ``virtual_mailbox_maps`` from Dovecot's users.

        Built beside the live table and renamed over it: a daemon holding the old table sees
        it unlinked and restarts before its next connection ("table has changed").
        """
        self._users = dict(users)
        lines = "".join(f"{u} OK\n" for u in sorted(users))
        new = self.config_dir / "vmailbox.new"
        new.write_text(lines)
        proc = subprocess.run(
            [self.postmap, "-c", str(self.config_dir), f"hash:{new}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"postmap failed: {(proc.stdout + proc.stderr).decode()}")
        os.replace(f"{new}.db", self.config_dir / "vmailbox.db")
        os.replace(new, self.config_dir / "vmailbox")

    # -- configuration ----------------------------------------------------------------------

    def _choose_ports(self) -> None:
        self.smtp_port = free_port()
        self.submission_port = free_port()
        self.smtps_port = free_port()

    def _main_cf(self) -> str:
        d = self.dovecot
        return f"""# flowrt private Postfix instance (generated by tests/servers/postfix.py)
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.log_path}
maillog_file_prefixes = {self.workdir}
myhostname = {self.hostname}
mydomain = test.example
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled in this test instance
alias_maps =
alias_database =
inet_interfaces = {self.host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
default_transport = error:5.7.1 outbound mail is disabled in this test instance
relay_transport = error:5.7.1 outbound mail is disabled in this test instance
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no
message_size_limit = 52428800
smtpd_banner = $myhostname ESMTP Postfix (flowrt test instance)
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 1000
in_flow_delay = 0s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
delay_warning_time = 0h

virtual_mailbox_domains = {", ".join(self.domains)}
virtual_mailbox_maps = hash:{self.config_dir}/vmailbox
virtual_transport = lmtp:inet:[{d.host}]:{d.lmtp_port}
smtpd_reject_unlisted_recipient = yes
unknown_virtual_mailbox_reject_code = 550
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination

smtpd_tls_chain_files = {self.key_path}, {self.cert_path}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_protocols = >=TLSv1.2

smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:{d.host}:{d.auth_port}
smtpd_sasl_auth_enable = no
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
"""

    def _master_cf(self) -> str:
        h = self.host
        auth_only = (
            "  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
        )
        return f"""# flowrt private Postfix instance (generated by tests/servers/postfix.py)
# service type  private unpriv  chroot  wakeup  maxproc command + args
{h}:{self.smtp_port} inet n - n - - smtpd
{h}:{self.submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
{auth_only}{h}:{self.smtps_port} inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
{auth_only}pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> PostfixServer:
        if self._closed:
            raise RuntimeError("this PostfixServer was closed")
        if self.running:
            return self
        if not self.dovecot.lmtp_port or not self.dovecot.auth_port:
            raise RuntimeError("start the DovecotServer before Postfix (LMTP/auth ports)")
        began = time.monotonic()
        self._make_directories()
        attempts = 1 if self._fixed_ports else 4
        for attempt in range(attempts):
            if not self._fixed_ports:
                self._choose_ports()
            _write_config(self.config_dir / "main.cf", self._main_cf())
            _write_config(self.config_dir / "master.cf", self._master_cf())
            # Directories are made above exactly as postfix-files says, so skip the slow
            # (~2 s) post-install/permission checks of `postfix start` (postfix-script).
            (self.queue_dir / "quick-start").touch()
            self._process = ServerProcess(
                "postfix",
                [self.binary, "-c", str(self.config_dir), "start"],
                output_path=self.workdir / "postfix.out",
                pidfile=self.pidfile,
                orphan_cleanup=self.workdir if self._own_workdir else None,
            )
            self._process.start()
            try:
                self._process.wait_ready(
                    self._listening, timeout=self.start_timeout, logs=[self.log_path]
                )
            except ServerStartError as exc:
                if "Address already in use" in str(exc) and attempt + 1 < attempts:
                    continue
                raise
            break
        self._fixed_ports = True
        self.last_start_seconds = time.monotonic() - began
        return self

    def _listening(self) -> bool:
        return ports_listening(self.host, list(self.ports().values()))

    def _make_directories(self) -> None:
        """Create queue_directory and data_directory as the package's postfix-files lists."""
        import grp

        uid, _gid = _postfix_ids()
        setgid_gid = grp.getgrnam("postdrop").gr_gid
        owners = {"root": 0, "$mail_owner": uid, "-": -1, "$setgid_group": setgid_gid}
        where = {"$queue_directory": self.queue_dir, "$data_directory": self.data_dir}
        entries: list[tuple[Path, int, int, int]] = []
        with contextlib.suppress(OSError):
            for line in Path("/etc/postfix/postfix-files").read_text().splitlines():
                fields = line.split(":")
                if len(fields) < 5 or fields[1] != "d":
                    continue
                top, _, rest = fields[0].partition("/")
                if top not in where or fields[2] not in owners or fields[3] not in owners:
                    continue
                path = where[top] / rest if rest else where[top]
                entries.append((path, owners[fields[2]], owners[fields[3]], int(fields[4], 8)))
        if not entries:  # the package always ships postfix-files; this is a fallback
            entries.append((self.queue_dir, 0, -1, 0o755))
            entries.append((self.data_dir, uid, -1, 0o700))
            for sub in ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold"):
                entries.append((self.queue_dir / sub, uid, -1, 0o700))
            for sub in ("incoming", "private", "saved", "trace"):
                entries.append((self.queue_dir / sub, uid, -1, 0o700))
            entries.append((self.queue_dir / "maildrop", uid, setgid_gid, 0o730))
            entries.append((self.queue_dir / "public", uid, setgid_gid, 0o710))
            entries.append((self.queue_dir / "pid", 0, -1, 0o755))
        for path, owner, group, mode in sorted(entries, key=lambda e: len(e[0].parts)):
            path.mkdir(exist_ok=True)
            os.chown(path, owner, 0 if group == -1 else group)
            os.chmod(path, mode)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def close(self) -> None:
        self.stop()
        self._closed = True
        with contextlib.suppress(ValueError):
            self.dovecot._user_listeners.remove(self._set_users)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostfixServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<PostfixServer {state} smtp={self.smtp_port} submission={self.submission_port} "
            f"smtps={self.smtps_port}>"
        )

    # -- log and delivery -------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_offset(self) -> int:
        """Current size of the log; pass as ``since`` to only look at what follows."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def wait_delivered(self, recipient: str, *, timeout: float = 15.0, since: int = 0) -> str:
        """Wait (bounded) for a ``status=sent`` log line for ``recipient``; return it.

        Raises ``DeliveryFailed`` at once when the message bounced, ``TimeoutError`` with the
        relevant log lines otherwise.
        """
        needle = f"to=<{recipient.lower()}>"
        deadline = time.monotonic() + timeout
        while True:
            lines = [
                line
                for line in self._log_since(since).splitlines()
                if needle in line.lower() and "status=" in line
            ]
            for line in lines:
                if "status=sent" in line:
                    return line
                if "status=bounced" in line:
                    raise DeliveryFailed(line)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no delivery to {recipient} after {timeout}s; log:\n"
                    + ("\n".join(lines) or log_tail(self.log_path, 30))
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def queue_is_empty(self) -> bool:
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            d = self.queue_dir / sub
            if d.exists() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True

    def wait_queue_empty(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.queue_is_empty():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Postfix queue not empty after {timeout}s")
            time.sleep(0.05)


# -- smtp-sink / smtp-source -----------------------------------------------------------------


class SmtpSink:
    """Postfix' ``smtp-sink`` on a free loopback port (a very fast SMTP server that discards).

    ``extra_args`` are passed before the address, e.g. ``["-d", "dir/%M."]`` to keep messages.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int | None = None,
        backlog: int = 256,
        extra_args: Sequence[str] = (),
        user: str = "nobody",
        workdir: str | Path | None = None,
    ) -> None:
        self.binary = require_binary(SMTP_SINK, "postfix", "Postfix smtp-sink")
        self.port = port or free_port()
        self.backlog = backlog
        self.extra_args = list(extra_args)
        self.user = user
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else make_workdir("flowrt-smtp-sink-")
        self.output_path = self.workdir / "smtp-sink.out"
        self._read_to = 0  # message_count: how far the output was read, and what it said
        self._partial = b""
        self._count = 0
        self._process: ServerProcess | None = None

    def start(self) -> SmtpSink:
        self._read_to, self._partial, self._count = 0, b"", 0  # a new output file
        argv = [self.binary, "-c"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without dropping privileges
            argv += ["-u", self.user]
        argv += self.extra_args
        argv += [f"{self.host}:{self.port}", str(self.backlog)]
        self._process = ServerProcess(
            "smtp-sink",
            argv,
            output_path=self.output_path,
            grace=2,
            orphan_cleanup=self.workdir if self._own_workdir else None,
        )
        self._process.start()
        self._process.wait_ready(lambda: ports_listening(self.host, [self.port]), timeout=10)
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive

    def message_count(self) -> int:
        """Messages received so far (from smtp-sink's ``-c`` counters, one per message).

        Reads only what was written since the last call: a benchmark asks every 2 ms, and
        reading the whole growing file each time took a fifth of a core from the runtime
        it measured."""
        try:
            with self.output_path.open("rb") as output:
                output.seek(self._read_to)
                new = output.read()
        except OSError:
            return self._count
        self._read_to += len(new)
        # a counter cut by the last read is read whole now: keep the tail after its last \r
        text = self._partial + new
        cut = max(text.rfind(b"\r"), text.rfind(b"\n")) + 1
        self._partial = text[cut:]
        counts = re.findall(rb"mesg=(\d+)", text[:cut])
        if counts:
            self._count = int(counts[-1])
        return self._count

    def wait_messages(self, count: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while (n := self.message_count()) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"smtp-sink got {n} of {count} messages after {timeout}s")
            time.sleep(0.02)
        return n

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class SmtpSourceResult:
    messages: int
    sessions: int
    seconds: float
    returncode: int
    output: str

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds if self.seconds > 0 else float("inf")


def run_smtp_source(
    port: int,
    *,
    host: str = "127.0.0.1",
    messages: int = 100,
    sessions: int = 1,
    size: int = 1024,
    sender: str = "source@example.com",
    recipient: str = "sink@example.com",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    check: bool = True,
) -> SmtpSourceResult:
    """Run Postfix' ``smtp-source`` load generator against ``host:port`` and time it."""
    binary = require_binary(SMTP_SOURCE, "postfix", "Postfix smtp-source")
    if not wait_for_port(host, port, timeout=5):
        raise ConnectionError(f"nothing listens on {host}:{port}")
    argv = [binary, "-m", str(messages), "-s", str(sessions), "-l", str(size)]
    argv += ["-f", sender, "-t", recipient, *extra_args, f"{host}:{port}"]
    began = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    seconds = time.monotonic() - began
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({proc.returncode}): {output}")
    return SmtpSourceResult(messages, sessions, seconds, proc.returncode, output)
