"""Deployed flows on PostgreSQL: a deploy on any machine reaches every node.

Same methods as :class:`~flowrt.runtime.deployments.Deployments`, and the same
self-contained versions: the text, the resolved parameter values and the bundled script
modules (``deployment_files``) are stored in one transaction, and ``deployed`` says which
version is current. The generation in ``flowrt_meta`` grows in that transaction; the nodes
watch it. A node writes a version's script modules into its own tenant directory
(``deployed/scripts/NAME/N/``, as the SQLite store keeps them) the first time it loads that
version, and the runtime imports them from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from flowrt.dsl import Flow
from flowrt.errors import FlowError
from flowrt.runtime.bundle import Bundle, ScriptRef, write_bundle
from flowrt.runtime.deployments import NAME_PATTERN, Deployment, DeployOutcome, deploy_digest
from flowrt.store.pg.connect import PgDatabase
from flowrt.tenant import Tenant

__all__ = ["PgDeployments"]

_COLUMNS = (
    "v.name, v.version, v.sha256, v.file, v.deployed_at, v.source, v.params, "
    "v.param_sources, v.scripts"
)
_SELECT = f"SELECT {_COLUMNS} FROM deployed d JOIN deployment_versions v USING (name, version)"


class PgDeployments:
    def __init__(self, db: PgDatabase, tenant: Tenant) -> None:
        self.db = db
        self.scripts_root = tenant.root / "deployed" / "scripts"

    def close(self) -> None:
        self.db.close()

    def _guard(self, action: str) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        return self.db.guarded(
            f"deployments in {self.db.shown}", action, hint="is PostgreSQL running and reachable?"
        )

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
            return None if row is None else self._deployment(conn, row)

    def all(self) -> list[Deployment]:
        with self._guard("read") as conn:
            rows = conn.execute((_SELECT + " ORDER BY d.name").encode()).fetchall()
            return [self._deployment(conn, row) for row in rows]

    def bundle(self, deployment: Deployment) -> Bundle:
        """The script modules stored with ``deployment`` (to deploy them again unchanged)."""
        with self._guard("read scripts") as conn:
            files = _files(conn, deployment.name, deployment.version)
        return Bundle(files, tuple(ScriptRef(**ref) for ref in deployment.scripts))

    def _deployment(self, conn: psycopg.Connection[Any], row: Sequence[Any]) -> Deployment:
        name, version = str(row[0]), int(row[1])
        scripts = tuple(json.loads(row[8]))
        return Deployment(
            name=name,
            version=version,
            sha256=row[2],
            file=row[3],
            deployed_at=row[4],
            source=row[5],
            params=dict(json.loads(row[6])),
            param_sources=dict(json.loads(row[7])),
            scripts=scripts,
            scripts_dir=self._materialise(conn, name, version),
        )

    def _materialise(self, conn: psycopg.Connection[Any], name: str, version: int) -> Path | None:
        """This node's copy of the version's script modules (written once, atomically: a
        folder renamed into place), or None when it cannot be written here."""
        target = self.scripts_root.resolve() / name / str(version)
        if target.is_dir():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.parent / f".{version}.{os.getpid()}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            write_bundle(Bundle(_files(conn, name, version), ()), staging)
            try:
                staging.rename(target)
            except OSError:  # another process of this node wrote it first
                shutil.rmtree(staging, ignore_errors=True)
        except OSError:
            return None
        return target

    def deploy(
        self,
        flow: Flow,
        *,
        params: Mapping[str, str] | None = None,
        param_sources: Mapping[str, str] | None = None,
        bundle: Bundle | None = None,
    ) -> DeployOutcome:
        if not NAME_PATTERN.fullmatch(flow.name):
            raise FlowError(f"flow name {flow.name!r} cannot be deployed")
        values = dict(sorted((params or {}).items()))
        bundle = bundle or Bundle({}, ())
        digest = deploy_digest(flow, values, bundle)
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
                "source, params, param_sources, scripts) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    flow.name,
                    version,
                    digest,
                    os.path.abspath(flow.file),
                    dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    flow.source,
                    json.dumps(values),
                    json.dumps(dict(param_sources or {})),
                    json.dumps([dataclasses.asdict(ref) for ref in bundle.scripts]),
                ),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO deployment_files (name, version, path, content) "
                    "VALUES (%s, %s, %s, %s)",
                    [(flow.name, version, path, data) for path, data in bundle.files.items()],
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
            removed = self._deployment(conn, row)
            conn.execute("DELETE FROM deployed WHERE name = %s", (name,))
            _bump(conn)
        return removed


def _files(conn: psycopg.Connection[Any], name: str, version: int) -> dict[str, bytes]:
    rows = conn.execute(
        "SELECT path, content FROM deployment_files WHERE name = %s AND version = %s ORDER BY path",
        (name, version),
    )
    return {str(path): bytes(content) for path, content in rows}


def _bump(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO flowrt_meta (name, value) VALUES ('deploy_generation', '1') "
        "ON CONFLICT (name) DO UPDATE SET value = (flowrt_meta.value::bigint + 1)::text"
    )
