"""Parse benchmark: a generated flow file of about 5,000 lines, parsed and validated.

Prints one JSON line per figure. The reference, measured in the same run, is lark's bare
LALR parse of the same text (no model, no checks), so the figure shows what the model and
the validation add on top of parsing itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from flowrt.dsl import parse_text
from flowrt.dsl._parse import parser

EXAMPLE = (Path(__file__).resolve().parents[1] / "flows" / "imap-idle-router.flow").read_text()


def generate(lines: int) -> str:
    """Copies of a real flow (renamed) until the text has at least ``lines`` lines."""
    chunks: list[str] = []
    count = 0
    index = 0
    while count < lines:
        chunk = EXAMPLE.replace("flow support-router {", f"flow support-router-{index} {{")
        chunks.append(chunk)
        count += chunk.count("\n")
        index += 1
    return "\n".join(chunks)


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(best, median) wall time of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--lines", type=int, default=5000)
    args.add_argument("--repeat", type=int, default=5)
    opts = args.parse_args()
    text = generate(opts.lines)
    n_lines = text.count("\n") + 1
    result = parse_text(text, "generated.flow")
    assert result.ok, result.render()[:2000]
    lark_best, _ = best_of(opts.repeat, lambda: parser().parse(text))
    full_best, full_median = best_of(opts.repeat, lambda: parse_text(text, "generated.flow"))
    for figure, value, unit in [
        ("parse_validate_seconds", round(full_best, 4), "s"),
        ("parse_validate_median_seconds", round(full_median, 4), "s"),
        ("lark_parse_only_seconds", round(lark_best, 4), "s"),
        ("lines_per_second", round(n_lines / full_best), "lines/s"),
        ("overhead_vs_lark_parse", round(full_best / lark_best, 2), "x"),
    ]:
        print(
            json.dumps(
                {
                    "benchmark": "parse",
                    "figure": figure,
                    "value": value,
                    "unit": unit,
                    "lines": n_lines,
                    "flows": len(result.flows),
                }
            )
        )


if __name__ == "__main__":
    main()
