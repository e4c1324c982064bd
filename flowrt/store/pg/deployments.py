"""Deployed flows on PostgreSQL: a deploy on any machine reaches every node.

Same methods as :class:`~flowrt.runtime.deployments.Deployments`. Every version's text is
kept (``deployment_versions``); ``deployed`` says which one is current; the generation in
``flowrt_meta`` grows in the same transaction, and the nodes watch it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import psycopg

from flowrt.dsl import Flow
from flowrt.errors import FlowError, StoreError
from flowrt.runtime.deployments import NAME_PATTERN, Deployment, DeployOutcome, flow_digest
from flowrt.store.pg.connect import PgDatabase

__all__ = ["PgDeployments"]

_SELECT = (
    "SELECT v.name, v.version, v.sha256, v.file, v.deployed_at, v.source "
    "FROM deployed d JOIN deployment_versions v USING (name, version)"
)


class PgDeployments:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.db.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"deployments in {self.db.shown}: {action} failed: {text}",
                hint="is PostgreSQL running and reachable?",
            ) from exc

    def generation(self) -> int:
        with self._guard("read the generation") as conn:
            row = conn.execute(
                "SELECT value FROM flowrt_meta WHERE name = 'deploy_generation'"
            ).fetchone()
        return 0 if row is None else int(row[0])

    def names(self) -> list[str]:
        with self._guard("list") as conn:
            return [str(r[0]) for r in conn.execute("SELECT name FROM deployed ORDER BY name")]

    def get(self, name: str) -> Deployment | None:
        with self._guard("read") as conn:
            row = conn.execute((_SELECT + " WHERE d.name = %s").encode(), (name,)).fetchone()
        return None if row is None else Deployment(*row)

    def all(self) -> list[Deployment]:
        with self._guard("read") as conn:
            rows = conn.execute((_SELECT + " ORDER BY d.name").encode()).fetchall()
        return [Deployment(*row) for row in rows]

    def deploy(self, flow: Flow) -> DeployOutcome:
        if not NAME_PATTERN.fullmatch(flow.name):
            raise FlowError(f"flow name {flow.name!r} cannot be deployed")
        digest = flow_digest(flow)
        with self._guard("deploy") as conn, conn.transaction():
            conn.execute("LOCK TABLE deployed IN EXCLUSIVE MODE")  # deploys one at a time
            current = conn.execute(
                "SELECT v.version, v.sha256 FROM deployed d "
                "JOIN deployment_versions v USING (name, version) WHERE d.name = %s",
                (flow.name,),
            ).fetchone()
            if current is not None and current[1] == digest:
                return DeployOutcome(flow.name, int(current[0]), changed=False)
            last = conn.execute(
                "SELECT coalesce(max(version), 0) FROM deployment_versions WHERE name = %s",
                (flow.name,),
            ).fetchone()
            version = (int(last[0]) if last else 0) + 1
            conn.execute(
                "INSERT INTO deployment_versions (name, version, sha256, file, deployed_at, "
                "source) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    flow.name,
                    version,
                    digest,
                    os.path.abspath(flow.file),
                    dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    flow.source,
                ),
            )
            conn.execute(
                "INSERT INTO deployed (name, version) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                (flow.name, version),
            )
            _bump(conn)
        return DeployOutcome(flow.name, version, changed=True)

    def undeploy(self, name: str) -> Deployment:
        with self._guard("undeploy") as conn, conn.transaction():
            conn.execute("LOCK TABLE deployed IN EXCLUSIVE MODE")
            row = conn.execute((_SELECT + " WHERE d.name = %s").encode(), (name,)).fetchone()
            if row is None:
                names = [str(r[0]) for r in conn.execute("SELECT name FROM deployed")]
                raise FlowError(
                    f"no deployed flow named {name!r} (deployed: {', '.join(names) or 'none'})"
                )
            conn.execute("DELETE FROM deployed WHERE name = %s", (name,))
            _bump(conn)
        return Deployment(*row)


def _bump(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO flowrt_meta (name, value) VALUES ('deploy_generation', '1') "
        "ON CONFLICT (name) DO UPDATE SET value = (flowrt_meta.value::bigint + 1)::text"
    )
