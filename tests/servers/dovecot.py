"""A private Dovecot 2.3 instance on 127.0.0.1 (IMAP, POP3, LMTP, SASL auth for Postfix).

Everything lives in one temporary directory (config, base_dir, state_dir, log, maildirs);
all listeners are on free high ports. Runs as root with ``default_login_user = dovenull``
and ``default_internal_user = dovecot``; mail is stored as the ``dovecot`` user.

Users are full addresses with ``{PLAIN}`` passwords in a passwd-file (so CRAM-MD5 works),
which Dovecot re-reads when it changes, so ``add_user`` works while running.

The helpers (``append``, ``messages``, ``folders``, ...) use the stdlib ``imaplib`` as an
independent client over the plain IMAP port (the server allows plaintext LOGIN there).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ._ports import free_port, ports_listening
from ._proc import ServerProcess, ServerStartError, make_workdir, require_binary, require_root
from .ca import ServerCert, TestCA

__all__ = ["DEFAULT_USERS", "DovecotServer", "MailboxUser", "Message"]

DOVECOT = "/usr/sbin/dovecot"

#: (uid, flags, raw RFC 5322 bytes)
Message = tuple[int, tuple[str, ...], bytes]

#: Users every fixture instance gets, with their test passwords.
DEFAULT_USERS: dict[str, str] = {
    "plant@example.com": "plant-secret",
    "accounting@example.com": "accounting-secret",
    "archive@example.com": "archive-secret",
}

# RFC 7919 ffdhe2048 group (public constant), so no DH generation at start-up.
FFDHE2048_PEM = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


@dataclass(frozen=True)
class MailboxUser:
    """A Dovecot user (full address) and its password."""

    address: str
    password: str

    def __str__(self) -> str:
        return self.address


_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_LIST_LINE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>"[^"]*"|NIL) (?P<name>.+)$')
_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")


def _quote(name: str) -> str:
    if not name.isascii() or any(c in name for c in "\r\n\0"):
        raise ValueError(f"folder names must be plain ASCII here: {name!r}")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(raw: bytes) -> str:
    text = raw.decode("ascii", "replace").strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


def _check_ok(what: str, typ: str, data: object) -> None:
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{what} failed: {typ} {data!r}")


def _chown_dovecot(path: Path) -> None:
    import grp
    import pwd

    os.chown(path, pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid)


class DovecotServer:
    """A private Dovecot on 127.0.0.1.

    Ports (0 until started, then fixed for ``restart()``): ``imap_port`` (STARTTLS offered),
    ``imaps_port``, ``pop3_port`` (STLS offered), ``pop3s_port``, ``lmtp_port``, ``auth_port``
    (Dovecot auth-client protocol over TCP, for Postfix ``smtpd_sasl_type = dovecot``; the
    same on the unix socket ``auth_socket``). ``tls=False`` starts a variant without TLS: no
    STARTTLS/STLS, ``imaps_port == pop3s_port == 0``.

    Users: ``users`` ({address: password}, default ``DEFAULT_USERS``), ``add_user``,
    ``new_user``, ``password(address)``. With ``oauth2_introspection_url``, an ``oauth2``
    passdb takes bearer tokens (``oauth2_mechanisms``: XOAUTH2 and/or OAUTHBEARER, for IMAP,
    POP3 and Postfix SASL alike) and asks that RFC 7662 endpoint whether a token is active
    and whose it is (``username``). Without ``cert``, a certificate is issued by ``ca``
    (or a throw-away CA). A ``workdir`` given by the caller must be reachable by the
    ``dovecot`` user (every parent directory world-executable).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        ca: TestCA | None = None,
        cert: ServerCert | None = None,
        tls: bool = True,
        users: dict[str, str] | None = None,
        hostname: str = "mail.test.example",
        workdir: str | Path | None = None,
        start_timeout: float = 20.0,
        oauth2_introspection_url: str | None = None,
        oauth2_mechanisms: Sequence[str] = ("xoauth2", "oauthbearer"),
    ) -> None:
        self.binary = require_binary(DOVECOT, "dovecot-imapd", "Dovecot")
        self.oauth2_introspection_url = oauth2_introspection_url
        self.oauth2_mechanisms = tuple(oauth2_mechanisms)
        require_root("Dovecot")
        for binary, package in (
            ("/usr/lib/dovecot/imap", "dovecot-imapd"),
            ("/usr/lib/dovecot/pop3", "dovecot-pop3d"),
            ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ):
            require_binary(binary, package, f"Dovecot {Path(binary).name}")
        self.tls = tls
        self.hostname = hostname
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else make_workdir("flowrt-dovecot-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # mail processes (uid dovecot) traverse it
        self.config_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self.users_dir = self.workdir / "users"
        self.mail_dir = self.workdir / "mail"
        self.base_dir = self.workdir / "run"
        self.state_dir = self.workdir / "state"
        self.cert: ServerCert | None = None
        tls_dir = self.workdir / "tls"
        self.cert_path = tls_dir / "dovecot.chain.pem"  # leaf + intermediate
        self.key_path = tls_dir / "dovecot.key.pem"
        self.dh_path = tls_dir / "dh.pem"
        if tls:
            if cert is None:
                issuer = ca or TestCA().new_intermediate()
                cert = issuer.issue_server_cert()
            self.cert = cert
            self.cert_path, self.key_path = cert.write(tls_dir, "dovecot")
            self.dh_path.write_text(FFDHE2048_PEM)
        self.users: dict[str, str] = {}
        self._user_listeners: list[Callable[[dict[str, str]], None]] = []
        self.imap_port = self.imaps_port = self.pop3_port = self.pop3s_port = 0
        self.lmtp_port = self.auth_port = 0
        self._process: ServerProcess | None = None
        self._fixed_ports = False
        self._closed = False
        self.last_start_seconds: float | None = None
        self._write_passwd()
        for address, password in (DEFAULT_USERS if users is None else users).items():
            self.add_user(address, password)

    # -- properties ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive

    @property
    def auth_socket(self) -> Path:
        """Unix socket speaking Dovecot's auth-client protocol (for Postfix SASL)."""
        return self.base_dir / "auth-client"

    @property
    def lmtp_socket(self) -> Path:
        return self.base_dir / "lmtp"

    def password(self, address: str) -> str:
        return self.users[address.lower()]

    def ports(self) -> dict[str, int]:
        return {
            "imap": self.imap_port,
            "imaps": self.imaps_port,
            "pop3": self.pop3_port,
            "pop3s": self.pop3s_port,
            "lmtp": self.lmtp_port,
            "auth": self.auth_port,
        }

    # -- users ----------------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> None:
        """Add (or change) a user; works before start and while running."""
        address = address.strip().lower()
        if not re.fullmatch(r"[a-z0-9._+\-]+@[a-z0-9.\-]+", address):
            raise ValueError(f"unsupported test address {address!r}")
        if any(c in password for c in ":\r\n\0") or not password:
            raise ValueError("test passwords must be non-empty and free of ':' and newlines")
        self.users[address] = password
        self._write_passwd()
        for listener in list(self._user_listeners):
            listener(dict(self.users))

    def new_user(self, prefix: str = "user", domain: str = "example.com") -> MailboxUser:
        """Add a user with a unique address and a random password; mailbox starts empty."""
        import secrets

        address = f"{prefix}-{secrets.token_hex(5)}@{domain}".lower()
        password = secrets.token_urlsafe(12)
        self.add_user(address, password)
        return MailboxUser(address, password)

    def remove_user(self, address: str) -> None:
        self.users.pop(address.lower(), None)
        self._write_passwd()
        for listener in list(self._user_listeners):
            listener(dict(self.users))

    def on_users_changed(self, listener: Callable[[dict[str, str]], None]) -> None:
        """Register a callback getting the full user map whenever it changes (Postfix)."""
        self._user_listeners.append(listener)
        listener(dict(self.users))

    def _write_passwd(self) -> None:
        # One passwd-file per user (the passdb/userdb path is ``users/%Lu``): Dovecot checks
        # a known file for changes at most once a second, but opens a new file on first use,
        # so a user added while running can log in (and receive mail) at once.
        import grp

        gid = grp.getgrnam("dovecot").gr_gid
        if not self.users_dir.exists():
            self.users_dir.mkdir()
            os.chown(self.users_dir, 0, gid)
            os.chmod(self.users_dir, 0o750)
        wanted = set(self.users)
        for existing in self.users_dir.iterdir():
            if existing.name not in wanted:
                existing.unlink()
        for user, password in self.users.items():
            path = self.users_dir / user
            line = f"{user}:{{PLAIN}}{password}::::::\n"
            with contextlib.suppress(OSError):
                if path.read_text() == line:
                    continue
            tmp = path.with_name(f".{user}.tmp")
            tmp.write_text(line)
            os.chmod(tmp, 0o640)
            os.chown(tmp, 0, gid)
            os.replace(tmp, path)

    # -- configuration ----------------------------------------------------------------------

    def _choose_ports(self) -> None:
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.lmtp_port = free_port()
        self.auth_port = free_port()
        self.imaps_port = free_port() if self.tls else 0
        self.pop3s_port = free_port() if self.tls else 0

    def _config(self) -> str:
        h = self.host
        if self.tls:
            tls = (
                "ssl = yes\n"
                f"ssl_cert = <{self.cert_path}\n"
                f"ssl_key = <{self.key_path}\n"
                f"ssl_dh = <{self.dh_path}\n"
                "ssl_min_protocol = TLSv1.2\n"
            )
        else:
            tls = "ssl = no\n"
        return f"""# flowrt private Dovecot instance (generated by tests/servers/dovecot.py)
instance_name = flowrt-{self.workdir.name}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S "
hostname = {self.hostname}
protocols = imap pop3 lmtp
listen = {h}
shutdown_clients = yes

default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_max_userip_connections = 1000
mail_fsync = optimized
# IDLE notices new mail through inotify; where the kernel has no inotify instance left
# (many private Dovecots side by side, a container that caps them) it polls the mailbox
# instead, every 30 s by default: too slow for tests that wait on IDLE push.
mailbox_idle_check_interval = 1 secs

auth_mechanisms = plain login cram-md5{self._oauth2_mechanisms()}
disable_plaintext_auth = no
auth_verbose = yes
auth_failure_delay = 0
auth_username_format = %Lu
{tls}{self._oauth2_passdb()}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {self.users_dir}/%Lu
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {self.users_dir}/%Lu
  default_fields = uid=dovecot gid=dovecot home={self.mail_dir}/%Ld/%Ln
}}

service imap-login {{
  inet_listener imap {{
    address = {h}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {h}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {h}
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    address = {h}
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {h}
    port = {self.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service auth {{
  inet_listener auth-postfix {{
    address = {h}
    port = {self.auth_port}
  }}
  unix_listener auth-client {{
    mode = 0666
  }}
}}
# No auth penalty (growing delays after failed logins from one IP: every client here is
# 127.0.0.1, so one test's wrong password would slow down the next tests).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.com
}}
"""

    def _oauth2_mechanisms(self) -> str:
        if self.oauth2_introspection_url is None:
            return ""
        return " " + " ".join(self.oauth2_mechanisms)

    def _oauth2_passdb(self) -> str:
        """The oauth2 passdb (before passwd-file, for the bearer mechanisms only)."""
        if self.oauth2_introspection_url is None:
            return ""
        conf = self.workdir / "dovecot-oauth2.conf.ext"
        conf.write_text(
            f"introspection_url = {self.oauth2_introspection_url}\n"
            "introspection_mode = post\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
            "timeout_msecs = 10000\n"
        )
        return f"""
passdb {{
  driver = oauth2
  mechanisms = {" ".join(self.oauth2_mechanisms)}
  args = {conf}
}}"""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> DovecotServer:
        if self._closed:
            raise RuntimeError("this DovecotServer was closed")
        if self.running:
            return self
        began = time.monotonic()
        attempts = 1 if self._fixed_ports else 4
        for attempt in range(attempts):
            if not self._fixed_ports:
                self._choose_ports()
            for d in (self.base_dir, self.state_dir):
                d.mkdir(exist_ok=True)
            if not self.mail_dir.exists():
                self.mail_dir.mkdir()
                _chown_dovecot(self.mail_dir)
            self.config_path.write_text(self._config())
            self._process = ServerProcess(
                "dovecot",
                [self.binary, "-F", "-c", str(self.config_path)],
                output_path=self.workdir / "dovecot.out",
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
        self._fixed_ports = True  # restart() keeps the ports
        self.last_start_seconds = time.monotonic() - began
        return self

    def _listening(self) -> bool:
        return ports_listening(self.host, [p for p in self.ports().values() if p])

    def stop(self) -> None:
        """Stop the server; data, users and ports are kept for ``start()``/``restart()``."""
        if self._process is not None:
            self._process.stop()
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the Dovecot master (a crash); ``start()`` brings it back on the same ports."""
        if self._process is not None:
            self._process.kill()
            self._process = None

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def close(self) -> None:
        """Stop and delete the working directory (mail included)."""
        self.stop()
        self._closed = True
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DovecotServer {state} imap={self.imap_port} pop3={self.pop3_port} tls={self.tls}>"

    # -- independent IMAP client helpers ---------------------------------------------------

    @contextlib.contextmanager
    def imap(
        self,
        user: str,
        *,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> Iterator[imaplib.IMAP4]:
        """A logged-in ``imaplib`` client (plain port; IMAPS when ``ssl_context`` is given)."""
        client: imaplib.IMAP4
        if ssl_context is not None:
            client = imaplib.IMAP4_SSL(
                self.host, self.imaps_port, ssl_context=ssl_context, timeout=timeout
            )
        else:
            client = imaplib.IMAP4(self.host, self.imap_port, timeout=timeout)
        try:
            client.login(user, password if password is not None else self.password(user))
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def create_folder(self, user: str, folder: str) -> None:
        with self.imap(user) as c:
            typ, data = c.create(_quote(folder))
            if typ != "OK" and b"ALREADYEXISTS" not in b"".join(
                d for d in data if isinstance(d, bytes)
            ):
                raise imaplib.IMAP4.error(f"CREATE {folder!r} failed: {data!r}")
            c.subscribe(_quote(folder))

    def folders(self, user: str) -> list[str]:
        with self.imap(user) as c:
            typ, data = c.list()
            _check_ok("LIST", typ, data)
        names: list[str] = []
        for line in data:
            if not isinstance(line, bytes):
                continue
            m = _LIST_LINE.match(line)
            if m:
                names.append(_unquote(m.group("name")))
        return sorted(names)

    def append(
        self,
        user: str,
        folder: str,
        raw: bytes,
        flags: Iterable[str] = (),
        *,
        create: bool = True,
    ) -> int | None:
        """APPEND a message; returns its UID (from APPENDUID). Creates the folder if needed."""
        if create and folder.upper() != "INBOX":
            self.create_folder(user, folder)
        with self.imap(user) as c:
            flag_list = "(" + " ".join(flags) + ")" if flags else None
            typ, data = c.append(_quote(folder), flag_list, None, raw)
            _check_ok("APPEND", typ, data)
        for item in data:
            if isinstance(item, bytes):
                m = _APPENDUID.search(item)
                if m:
                    return int(m.group(1))
        return None

    def messages(self, user: str, folder: str = "INBOX") -> list[Message]:
        """All messages of a folder as ``(uid, flags, raw)``, oldest first, without side effects."""
        with self.imap(user) as c:
            typ, data = c.select(_quote(folder), readonly=True)
            _check_ok(f"EXAMINE {folder!r}", typ, data)
            if int((data[0] or b"0").decode()) == 0:
                return []
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            _check_ok("UID FETCH", typ, data)
        out: list[Message] = []
        items: Sequence[object] = data
        for i, item in enumerate(items):
            if not isinstance(item, tuple):
                continue
            head, body = item
            trailer = items[i + 1] if i + 1 < len(items) else b""
            meta = head + (trailer if isinstance(trailer, bytes) else b"")
            uid_m = _FETCH_UID.search(meta)
            flags_m = _FETCH_FLAGS.search(meta)
            if uid_m is None:
                continue
            flags = tuple(flags_m.group(1).decode().split()) if flags_m else ()
            out.append((int(uid_m.group(1)), flags, bytes(body)))
        out.sort(key=lambda m: m[0])
        return out

    def wait_for_message(
        self,
        user: str,
        folder: str = "INBOX",
        predicate: Callable[[Message], bool] = lambda _m: True,
        timeout: float = 15.0,
    ) -> Message:
        """Wait (bounded) until a message matching ``predicate`` is in ``folder``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                msgs = self.messages(user, folder)
                seen = len(msgs)
                for m in msgs:
                    if predicate(m):
                        return m
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no matching message for {user} in {folder!r} after {timeout}s "
                    f"({seen} message(s) there)"
                )
            time.sleep(0.1)
