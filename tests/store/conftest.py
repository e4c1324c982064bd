"""Fixtures of the store contract suite: the same tests on SQLite and on PostgreSQL.

``postgres`` (session): one private PostgreSQL 15 for the whole run (tests/servers/postgres.py);
``pg_config`` (function): a fresh, empty database in it, and ``PGPASSFILE`` pointing at the
server's password file (how a real node finds its password without a credential);
``tenant`` (function, parametrised): a new tenant on each backend.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from flowrt.security.masterkey import MasterKey
from flowrt.security.setup import init_tenant
from flowrt.store.config import StoreConfig
from flowrt.tenant import Tenant
from tests.servers.postgres import PostgresServer

_numbers = itertools.count()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """`flowrt run` in process points structlog at the CLI runner's stream; the tests after
    these must find it as it was."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_passfile(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PGPASSFILE", str(postgres.passfile))
    return postgres.passfile


@pytest.fixture
def new_database(postgres: PostgresServer, pg_passfile: Path) -> Callable[[], str]:
    def make() -> str:
        name = f"t{os.getpid()}_{next(_numbers)}_{uuid.uuid4().hex[:6]}"
        return postgres.create_database(name)

    return make


@pytest.fixture
def pg_config(new_database: Callable[[], str]) -> StoreConfig:
    return StoreConfig(url=new_database(), tenant_id=uuid.uuid4().hex)


def make_pg_tenant(root: Path, config: StoreConfig) -> Tenant:
    from flowrt.store.setup import create_schema

    def prepare(tenant: Tenant, key: MasterKey) -> None:
        create_schema(tenant, key, config, None)

    return init_tenant(root, store=config.to_json(), prepare=prepare).tenant


@pytest.fixture(params=["sqlite", "postgresql"])
def tenant(request: pytest.FixtureRequest, tmp_path: Path) -> Tenant:
    root = tmp_path / "tenant"
    if request.param == "sqlite":
        return init_tenant(root).tenant
    config = request.getfixturevalue("pg_config")
    return make_pg_tenant(root, config)
