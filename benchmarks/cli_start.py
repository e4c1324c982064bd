"""CLI start: how long a ``flowrt`` command takes from the shell, for the commands an operator
types again and again (``--version``, ``status``, ``mpl list``, ``locks list``) on a new
tenant. One JSON line per figure.

The reference, in the same run: a Python process that imports click and exits, the floor
for any click command on this machine. Wall seconds are medians of ``--runs`` runs, each
command run in turn with the others so that a drift of the machine hits all of them.

Usage: ``python benchmarks/cli_start.py [--runs 15]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "version": ["--version"],
    "status": ["status"],
    "mpl_list": ["mpl", "list"],
    "locks_list": ["locks", "list"],
}


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    record = {"benchmark": "cli_start", "figure": figure, "value": value, "unit": unit}
    print(json.dumps({**record, **extra}), flush=True)


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    args.add_argument("--runs", type=int, default=15)
    opts = args.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowrt-cli-") as folder:
        tenant = Path(folder) / "tenant"
        env = {**os.environ, "FLOWRT_HOME": str(tenant)}
        flowrt = [sys.executable, "-m", "flowrt.cli.main"]
        subprocess.run([*flowrt, "init"], env=env, capture_output=True, check=True)
        runs: dict[str, list[float]] = {name: [] for name in ["reference", *COMMANDS]}
        for _ in range(opts.runs):
            runs["reference"].append(timed([sys.executable, "-c", "import click"], env))
            for name, argv in COMMANDS.items():
                runs[name].append(timed([*flowrt, *argv], env))
        reference = statistics.median(runs["reference"])
        emit("reference_import_click", round(reference, 3), "s", runs=opts.runs)
        for name in COMMANDS:
            median = statistics.median(runs[name])
            emit(name, round(median, 3), "s", runs=opts.runs)
            emit(f"{name}_vs_reference", round(median / reference, 2), "ratio", runs=opts.runs)


if __name__ == "__main__":
    main()
