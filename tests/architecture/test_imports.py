"""The layering rules of ARCHITECTURE.md, checked on the source: the core reaches adapters only
through the seam, the CLI loads no protocol library, and validating a flow loads none."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "flowrt"
SEAM = "flowrt.adapters.registry"
PROTOCOL_LIBRARIES = ("aiosmtplib", "aioimaplib", "python_socks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module a file imports (at any depth, lazily or not), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _files(*packages: str) -> list[Path]:
    return sorted(f for p in packages for f in (PACKAGE / p).rglob("*.py"))


def _violations(packages: tuple[str, ...], bad: object) -> list[str]:
    found = []
    for path in _files(*packages):
        for line, name in _imports(path):
            if callable(bad) and bad(name):
                found.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    return found


def test_the_core_reaches_adapters_only_through_the_seam() -> None:
    def bad(name: str) -> bool:
        inside = name == "flowrt.adapters" or name.startswith("flowrt.adapters.")
        return inside and not (name in (SEAM, "flowrt.adapters") or name.startswith(SEAM + "."))

    assert _violations(("dsl", "engine", "runtime"), bad) == []


def test_the_cli_imports_no_protocol_library() -> None:
    def bad(name: str) -> bool:
        return name.split(".")[0] in PROTOCOL_LIBRARIES

    assert _violations(("cli",), bad) == []


def test_no_import_cycle_between_modules_at_load_time() -> None:
    """Module-level imports (not those inside functions or TYPE_CHECKING) form no cycle."""
    modules = {_module_name(f): f for f in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        deps: set[str] = set()
        for node in tree.body:  # top level only: lazy imports are how cycles are avoided
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_validate_loads_no_protocol_library(tmp_path: Path) -> None:
    flow = ROOT / "flows" / "imap-idle-router.flow"
    script = (
        "import sys\n"
        "from flowrt.cli.main import cli\n"
        "try:\n"
        f"    cli(['validate', {str(flow)!r}])\n"
        "except SystemExit as exit:\n"
        "    loaded = [m for m in sys.modules if m.split('.')[0] in "
        f"{PROTOCOL_LIBRARIES!r}]\n"
        "    print('LOADED', loaded, 'EXIT', exit.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        timeout=60,
    )
    assert done.stdout.strip().splitlines()[-1] == "LOADED [] EXIT 0", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("argv", "own"),
    [(["--version"], set()), (["mpl", "list", "--help"], {"mpl"}), (["status"], {"run"})],
)
def test_a_command_loads_only_its_own_module(
    tmp_path: Path, argv: list[str], own: set[str]
) -> None:
    """Every command pays for its own imports only: `flowrt status` at 3 a.m. does not load
    the flow tests, the simulator, the connector or the notification CLI."""
    script = (
        "import sys\n"
        "from flowrt.cli.main import cli\n"
        "try:\n"
        f"    cli({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "commands = sorted(m.split('.')[2] for m in sys.modules\n"
        "                  if m.startswith('flowrt.cli.') and not m.split('.')[2].startswith('_')\n"
        "                  and m != 'flowrt.cli.main')\n"
        "heavy = sorted(m for m in ('flowrt.flowtest', 'flowrt.runtime.simulation',\n"
        "               'flowrt.connector', 'flowrt.notify') if m in sys.modules)\n"
        "print('COMMANDS', commands, 'HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLOWRT_HOME": str(tmp_path / "none")},
        cwd=tmp_path,
        timeout=60,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last == f"COMMANDS {sorted(own)!r} HEAVY []", done.stdout + done.stderr
