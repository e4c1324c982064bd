"""A private PostgreSQL 15 (Debian's ``postgresql`` package) on a free loopback port.

initdb runs in a temporary directory as the ``postgres`` user (the tests run as root, and
PostgreSQL refuses to run as root). Password authentication (scram) on TCP only, so that the
tests go through the same path as a real installation: the password comes from a libpq
password file (``PGPASSFILE``) or from the tenant's credential store, never from the URL.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.servers._ports import free_port, wait_for_port
from tests.servers._proc import ServerStartError, ServerUnavailable

__all__ = ["PostgresServer"]

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
PASSWORD = "pg-" + uuid.uuid4().hex[:12]


def _as_postgres(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", USER, "--", *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


class PostgresServer:
    """Start with :meth:`start`; :meth:`url` gives a database URL without the password."""

    def __init__(self) -> None:
        if not (BIN / "postgres").is_file():
            raise ServerUnavailable(
                f"{BIN / 'postgres'} is missing: apt-get install -y postgresql "
                "(scripts/install-servers)"
            )
        try:
            self._uid = pwd.getpwnam(USER).pw_uid
        except KeyError as exc:
            raise ServerUnavailable("no postgres user: apt-get install -y postgresql") from exc
        self.dir = Path(tempfile.mkdtemp(prefix="flowrt-pg-"))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.port = free_port()
        self.password = PASSWORD
        self.passfile = self.dir / "pgpass"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(self.dir, self._uid, -1)
        os.chown(pwfile, self._uid, -1)
        result = _as_postgres(
            BIN / "initdb",
            "-D",
            self.data,
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
            check=False,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed: {result.stderr[-2000:]}")
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 64MB\n"
            )
        self.passfile.write_text(f"127.0.0.1:{self.port}:*:{USER}:{self.password}\n")
        os.chmod(self.passfile, 0o600)
        self._ctl_start()
        return self

    def _ctl_start(self) -> None:
        log = self.dir / "postgres.log"
        result = _as_postgres(
            BIN / "pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "30", "start", check=False
        )
        if result.returncode != 0 or not wait_for_port("127.0.0.1", self.port, 30):
            tail = ""
            with contextlib.suppress(OSError):
                tail = log.read_text()[-2000:]
            raise ServerStartError(f"PostgreSQL did not start: {result.stderr}\n{tail}")

    def restart(self) -> None:
        """Stop (fast: connections are cut) and start again on the same port."""
        _as_postgres(BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)
        self._ctl_start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = _as_postgres(
            BIN / "psql", "-h", self.dir, "-p", str(self.port), "-d", database, "-Atc", sql
        )
        return result.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _as_postgres(BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
