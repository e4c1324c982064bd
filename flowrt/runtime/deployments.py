"""Deployed flows: each a versioned copy of its flow file in the tenant.

A version is self-contained: the flow text, the resolved parameter values and the script
modules it uses (see :mod:`flowrt.runtime.bundle`); the runtime loads only from there, so
editing or deleting the files a flow was deployed from changes nothing until the next deploy.

Layout under ``<tenant>/deployed/``::

    NAME.json              {"name", "version", "sha256", "file", "deployed_at", "params",
                            "param_sources", "scripts"}: the current one
    NAME.flow              the flow file's text as validated at deploy time
    history/NAME/N.flow    every version ever deployed
    versions/NAME/N.json   its metadata
    scripts/NAME/N/        the script modules of version N
    generation             a counter bumped by every deploy and undeploy

The runtime watches ``generation`` (one stat a poll) and reloads what changed. Every file is
written atomically, the scripts and the current ``.flow`` before the ``.json``, so a reader
never sees a version whose text or scripts are missing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowrt._fs import atomic_write
from flowrt.dsl import Flow, parse_text
from flowrt.errors import FlowError, TenantError
from flowrt.runtime.bundle import Bundle, ScriptRef, write_bundle
from flowrt.tenant import Tenant

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class Deployment:
    name: str
    version: int
    sha256: str
    file: str
    deployed_at: str
    source: str
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    param_sources: dict[str, str] = dataclasses.field(default_factory=dict)
    scripts: tuple[dict[str, Any], ...] = ()
    scripts_dir: Path | None = None  # where this version's script modules are kept

    def load(self) -> Flow:
        """The deployed flow, parsed again from the stored text with the stored parameter
        values (it was valid when stored)."""
        result = parse_text(self.source, self.file, {self.name: self.params})
        for flow in result.flows:
            if flow.name == self.name:
                return flow
        raise FlowError(
            f"deployed flow {self.name} version {self.version} no longer validates:\n"
            + result.render(),
            diagnostics=result.diagnostics,
        )


@dataclasses.dataclass(frozen=True)
class DeployOutcome:
    name: str
    version: int
    changed: bool


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def deploy_digest(flow: Flow, params: Mapping[str, str], bundle: Bundle) -> str:
    """What tells a changed version from an unchanged one (both store backends): the text,
    the parameter values and the bundled files."""
    return _sha256(
        flow.source
        + "\0"
        + flow.name
        + "\0"
        + json.dumps(dict(params), sort_keys=True)
        + "\0"
        + bundle.digest()
    )


class Deployments:
    """The deployed flows of one tenant."""

    def __init__(self, tenant: Tenant) -> None:
        self.root = tenant.root / "deployed"

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def _meta(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def _ensure(self) -> None:
        try:
            (self.root / "history").mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise TenantError(
                f"the tenant directory {self.root.parent} is read-only: cannot deploy",
                hint="check the permissions of the tenant directory",
            ) from exc

    def generation(self) -> int:
        try:
            return int((self.root / "generation").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _bump(self) -> None:
        atomic_write(self.root / "generation", f"{self.generation() + 1}\n".encode(), mode=0o644)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))

    def get(self, name: str) -> Deployment | None:
        try:
            meta: dict[str, Any] = json.loads(self._meta(name).read_text(encoding="utf-8"))
            source = (self.root / f"{name}.flow").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise self._damaged(name, exc) from exc
        try:
            version = int(meta["version"])
            # A version deployed before scripts were bundled has none: its scripts are looked
            # up beside the flow file it came from, as they were then.
            scripts = self.root.resolve() / "scripts" / name / str(version)
            scripts_dir = scripts if "scripts" in meta else None
            return Deployment(
                name=str(meta["name"]),
                version=version,
                sha256=str(meta["sha256"]),
                file=str(meta["file"]),
                deployed_at=str(meta["deployed_at"]),
                source=source,
                params=dict(meta.get("params", {})),
                param_sources=dict(meta.get("param_sources", {})),
                scripts=tuple(meta.get("scripts", ())),
                scripts_dir=scripts_dir,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._damaged(name, exc) from exc

    def _damaged(self, name: str, exc: Exception) -> TenantError:
        what = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"({exc})"
        return TenantError(
            f"deployment {name} cannot be read: {self._meta(name)} or "
            f"{self.root / (name + '.flow')} is damaged {what}",
            hint=f"deploy the flow file again with `flowrt deploy FILE`, or remove "
            f"{self._meta(name)} to drop the deployment",
        )

    def bundle(self, deployment: Deployment) -> Bundle:
        """The script modules stored with ``deployment`` (to deploy them again unchanged)."""
        files: dict[str, bytes] = {}
        folder = deployment.scripts_dir
        if folder is not None and folder.is_dir():
            for path in sorted(folder.rglob("*.py")):
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
        refs = tuple(ScriptRef(**ref) for ref in deployment.scripts)
        return Bundle(files, refs)

    def all(self) -> list[Deployment]:
        return [d for d in (self.get(n) for n in self.names()) if d is not None]

    def deploy(
        self,
        flow: Flow,
        *,
        params: Mapping[str, str] | None = None,
        param_sources: Mapping[str, str] | None = None,
        bundle: Bundle | None = None,
    ) -> DeployOutcome:
        """Store ``flow`` (its whole file text), its parameter values and its scripts as the
        next version; unchanged -> no-op."""
        if not NAME_PATTERN.fullmatch(flow.name):
            raise FlowError(f"flow name {flow.name!r} cannot be deployed")
        self._ensure()
        params = dict(sorted((params or {}).items()))
        bundle = bundle or Bundle({}, ())
        digest = deploy_digest(flow, params, bundle)
        current = self.get(flow.name)
        if current is not None and current.sha256 == digest:
            return DeployOutcome(flow.name, current.version, changed=False)
        version = 1 if current is None else current.version + 1
        history = self.root / "history" / flow.name
        history.mkdir(parents=True, exist_ok=True)
        scripts = self.root / "scripts" / flow.name / str(version)
        if scripts.exists():  # left by a deploy that failed half-way: not a stored version
            shutil.rmtree(scripts)
        scripts.parent.mkdir(parents=True, exist_ok=True)
        staging = scripts.parent / f".{version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        write_bundle(bundle, staging)
        staging.rename(scripts)
        data = flow.source.encode("utf-8")
        atomic_write(history / f"{version}.flow", data, mode=0o644)
        atomic_write(self.root / f"{flow.name}.flow", data, mode=0o644)
        meta = {
            "name": flow.name,
            "version": version,
            "sha256": digest,
            "file": os.path.abspath(flow.file),
            "deployed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "params": params,
            "param_sources": dict(param_sources or {}),
            "scripts": [dataclasses.asdict(ref) for ref in bundle.scripts],
            "script_files": sorted(bundle.files),
        }
        encoded = json.dumps(meta, indent=2).encode()
        versions = self.root / "versions" / flow.name
        versions.mkdir(parents=True, exist_ok=True)
        atomic_write(versions / f"{version}.json", encoded, mode=0o644)
        atomic_write(self._meta(flow.name), encoded, mode=0o644)
        self._bump()
        return DeployOutcome(flow.name, version, changed=True)

    def undeploy(self, name: str) -> Deployment:
        current = self.get(name)
        if current is None:
            known = ", ".join(self.names()) or "none"
            raise FlowError(f"no deployed flow named {name!r} (deployed: {known})")
        self._meta(name).unlink()
        (self.root / f"{name}.flow").unlink(missing_ok=True)
        self._bump()
        return current
