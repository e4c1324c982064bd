"""Connections to a tenant's PostgreSQL store: one pool per store object, errors that say what
is wrong and what to run.

Why a pool: the runtime writes from its event loop, from the MPL writer thread and from the
poller's lease renewals at once; each borrows a connection for one short transaction. The pool
checks a connection before handing it out, so after PostgreSQL restarted the next call gets a
fresh connection instead of a dead one (the call that was cut off fails once and is retried by
its caller: the MPL recorder keeps its batch, the poller polls again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from flowrt.errors import FlowrtError, StoreError
from flowrt.store.config import StoreConfig
from flowrt.store.pg import schema

__all__ = ["PgDatabase", "connect_error"]

CONNECT_TIMEOUT = 5


def connect_error(config_url: str, exc: BaseException, tenant_dir: str | None = None) -> StoreError:
    """A StoreError for a failed connection, naming the database (never the password)."""
    from flowrt.store.config import display_url

    text = _first_line(exc)
    where = f"--tenant {tenant_dir} " if tenant_dir else ""
    if "password" in text.lower() or "authentication" in text.lower():
        hint = (
            "give the password in a libpq password file (PGPASSFILE) or re-create the "
            "credential named in tenant.json's store section (`flowrt credentials add`)"
        )
    elif "does not exist" in text:
        hint = "create the database (createdb), then run `flowrt " + where + "upgrade`"
    else:
        hint = (
            "check that PostgreSQL runs and the URL in tenant.json's store section is right "
            f"(`flowrt {where}store check` tries it)"
        )
    return StoreError(
        f"cannot reach the store database {display_url(config_url)}: {text}", hint=hint
    )


class PgDatabase:
    """The store database of one tenant.

    ``check``: refuse a database whose schema is not exactly this flowrt's, or that belongs to
    another tenant (every command but ``init``/``upgrade``). ``max_size``: connections.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        password: str | None = None,
        check: bool = True,
        max_size: int = 4,
        tenant_dir: str | None = None,
    ) -> None:
        self.config = config
        self.url = config.url
        self.shown = config.shown
        self._tenant_dir = tenant_dir
        self._kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT}
        if password is not None:
            self._kwargs["password"] = password
        # One direct connection first: a pool retries in the background, and an unreachable
        # database would show up as a bare timeout instead of libpq's reason.
        try:
            with psycopg.connect(self.url, **self._kwargs) as conn:
                if check:
                    schema.check(conn, config, tenant_dir=tenant_dir)
        except psycopg.Error as exc:
            raise connect_error(self.url, exc, tenant_dir) from exc
        self.pool = ConnectionPool(
            self.url,
            kwargs=self._kwargs,
            min_size=1,
            max_size=max_size,
            open=True,
            check=ConnectionPool.check_connection,
            timeout=30,
            reconnect_timeout=60,
            name="flowrt-store",
        )

    def direct(self) -> psycopg.Connection[Any]:
        """A connection outside the pool (migrations: one long transaction)."""
        try:
            return psycopg.connect(self.url, **self._kwargs)
        except psycopg.Error as exc:
            raise connect_error(self.url, exc, self._tenant_dir) from exc

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise connect_error(self.url, exc, self._tenant_dir) from exc

    @contextlib.contextmanager
    def guarded(
        self, what: str, action: str, *, hint: str, error: type[FlowrtError] = StoreError
    ) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection whose database errors raise ``error`` ("WHAT: ACTION failed:
        the first line of the error", with ``hint``); a pool that gives none raises the same
        class, with its own words. Every store of the tenant guards its work this way."""
        try:
            with self.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise error(f"{what}: {action} failed: {_first_line(exc)}", hint=hint) from exc
        except StoreError as exc:
            if error is StoreError:
                raise
            raise error(exc.args[0] if exc.args else str(exc), hint=exc.hint) from exc

    def close(self) -> None:
        self.pool.close()


def _first_line(exc: BaseException) -> str:
    """The first line of a database error (libpq's detail lines stay in the log)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
