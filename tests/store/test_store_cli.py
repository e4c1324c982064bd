"""`flowrt init --store`, `flowrt upgrade`, `flowrt store check` and the errors a user sees
for a wrong, unreachable, older or foreign store database: what is wrong, the command that
fixes it, nothing written, no traceback, no password."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from flowrt.cli.main import cli
from flowrt.store.pg import schema
from tests.servers._ports import free_port
from tests.servers.postgres import PostgresServer


def flowrt(tenant: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--tenant", str(tenant), *args], input=input)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_init_with_a_store_then_check_and_upgrade(
    tmp_path: Path, new_database: Callable[[], str]
) -> None:
    tenant = tmp_path / "t"
    url = new_database()
    result = flowrt(tenant, "init", "--store", url)
    assert result.exit_code == 0, result.output
    assert f"store: {url} (PostgreSQL" in result.output
    marker = json.loads((tenant / "tenant.json").read_text())
    assert marker["store"]["url"] == url and marker["store"]["credential"] is None
    check = flowrt(tenant, "store", "check")
    assert (
        check.exit_code == 0
        and f"reachable, schema version {schema.SCHEMA_VERSION}" in check.output
    )
    upgrade = flowrt(tenant, "upgrade")
    assert upgrade.exit_code == 0 and "nothing to do" in upgrade.output
    assert not (tenant / "mpl.sqlite").exists() and not (tenant / "state.sqlite").exists()


def test_password_from_stdin_goes_to_the_credential_store_only(
    tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))  # libpq finds nothing by itself
    url = postgres.create_database("with_password_" + tmp_path.name[-8:].replace("-", "_"))
    tenant = tmp_path / "t"
    result = flowrt(
        tenant, "init", "--store", url, "--store-password-stdin", input=postgres.password + "\n"
    )
    assert result.exit_code == 0, result.output
    assert flowrt(tenant, "store", "check").exit_code == 0
    assert flowrt(tenant, "mpl", "list").exit_code == 0
    for path in tenant.rglob("*"):
        if path.is_file():
            assert postgres.password.encode() not in path.read_bytes(), path
    assert postgres.password not in result.output


def test_a_password_in_the_url_is_refused(tmp_path: Path, postgres: PostgresServer) -> None:
    tenant = tmp_path / "t"
    url = f"postgresql://postgres:{postgres.password}@127.0.0.1:{postgres.port}/postgres"
    result = flowrt(tenant, "init", "--store", url)
    assert result.exit_code == 2
    assert "holds a password" in result.output and "--store-password-stdin" in result.output
    assert postgres.password not in result.output
    assert not tenant.exists()


def test_unreachable_database_writes_nothing(tmp_path: Path, pg_passfile: Path) -> None:
    tenant = tmp_path / "t"
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/flowrt"
    result = flowrt(tenant, "init", "--store", url)
    no_traceback(result)
    assert result.exit_code == 1
    assert f"cannot reach the store database {url}" in result.output
    assert "hint:" in result.output and "PostgreSQL runs" in result.output
    assert not tenant.exists()


def test_missing_database_names_createdb(
    tmp_path: Path, postgres: PostgresServer, pg_passfile: Path
) -> None:
    tenant = tmp_path / "t"
    result = flowrt(tenant, "init", "--store", postgres.url("no_such_db"))
    assert result.exit_code == 1
    assert 'database "no_such_db" does not exist' in result.output
    assert "createdb" in result.output
    assert not tenant.exists()


def test_another_tenants_database(tmp_path: Path, new_database: Callable[[], str]) -> None:
    url = new_database()
    assert flowrt(tmp_path / "a", "init", "--store", url).exit_code == 0
    # init of a second tenant on the same database: refused, nothing written
    second = flowrt(tmp_path / "b", "init", "--store", url)
    assert second.exit_code == 1 and "already holds a flowrt store" in second.output
    assert not (tmp_path / "b").exists()
    # a tenant whose setting points at another tenant's database: refused by every command
    other = tmp_path / "c"
    assert flowrt(other, "init", "--store", new_database()).exit_code == 0
    marker = json.loads((other / "tenant.json").read_text())
    marker["store"]["url"] = url
    (other / "tenant.json").write_text(json.dumps(marker))
    for args in (("mpl", "list"), ("status",), ("run", "--node", "n1", "--once")):
        result = flowrt(other, *args)
        no_traceback(result)
        assert result.exit_code == 1, (args, result.output)
        assert "belongs to another tenant" in result.output, args
        assert "tenant.json" in result.output
    assert flowrt(tmp_path / "a", "mpl", "list").exit_code == 0


def test_an_older_schema_is_refused_until_upgrade(
    tmp_path: Path, new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = tmp_path / "t"
    url = new_database()
    assert flowrt(tenant, "init", "--store", url).exit_code == 0
    # this flowrt knows one migration more than the database has
    now = schema.SCHEMA_VERSION
    extra = (f"{now + 1:04d}_test.sql", "CREATE TABLE upgraded_marker (x integer);")
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, extra))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    for args in (("mpl", "list"), ("run", "--node", "n1", "--once"), ("locks", "list")):
        result = flowrt(tenant, *args)
        no_traceback(result)
        assert result.exit_code == 1, result.output
        assert f"has schema version {now}; this flowrt needs {now + 1}" in result.output
        assert f"flowrt --tenant {tenant} upgrade" in result.output
    with psycopg.connect(url) as conn:  # refused, and nothing was written meanwhile
        assert conn.execute("SELECT to_regclass('upgraded_marker')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM nodes").fetchone() == (0,)
    upgraded = flowrt(tenant, "upgrade")
    assert upgraded.exit_code == 0 and f"schema version {now} -> {now + 1}" in upgraded.output
    assert flowrt(tenant, "mpl", "list").exit_code == 0
    # and a flowrt older than the database refuses it too
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:now])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", now)
    newer = flowrt(tenant, "mpl", "list")
    assert newer.exit_code == 1 and "newer than this flowrt knows" in newer.output


def test_node_needs_a_shared_store(tmp_path: Path) -> None:
    tenant = tmp_path / "t"
    assert flowrt(tenant, "init").exit_code == 0
    result = flowrt(tenant, "run", "--node", "n1", "--once")
    assert result.exit_code == 2 and "--node needs a PostgreSQL store" in result.output


def test_locks_and_status_across_nodes(tmp_path: Path, new_database: Callable[[], str]) -> None:
    from flowrt.store import open_state
    from flowrt.store.pg.state import PgStateDB
    from flowrt.tenant import Tenant

    tenant = tmp_path / "t"
    assert flowrt(tenant, "init", "--store", new_database()).exit_code == 0
    state = open_state(Tenant(tenant))
    assert isinstance(state, PgStateDB)
    try:
        state.register_node("node-x")  # as another machine's node would
        state.node_heartbeat("node-x", {"flows": {}})
        taken, lease = state.acquire_lock("u@mail/INBOX", "node-x/other:1:ab", 60, info="f1")
        assert taken
    finally:
        state.close()
    listing = flowrt(tenant, "locks", "list", "--format", "json")
    [lock] = json.loads(listing.output)
    assert lock["key"] == "u@mail/INBOX" and lock["state"] == "held"
    shown = json.loads(flowrt(tenant, "status", "--format", "json").output)
    [node] = shown["nodes"]
    assert node["node"] == "node-x" and node["state"] == "running" and node["holds"] == "f1"
    assert shown["locks"][0]["node"] == "node-x" and shown["locks"][0]["epoch"] == lease.epoch
    released = flowrt(tenant, "locks", "release", "u@mail/INBOX")
    assert released.exit_code == 0 and "released lock u@mail/INBOX" in released.output
    assert "still valid" in released.output  # the holder stops at its next renewal
    assert json.loads(flowrt(tenant, "locks", "list", "--format", "json").output) == []
