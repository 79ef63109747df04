"""Run every benchmark and print its table: `python -m bench [name ...]`. A run of all of them (`make bench`)
also writes bench/results.md: when, on what machine and Python, and every table."""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

from bench import Table

RESULTS = Path(__file__).resolve().parent / "results.md"

BENCHMARKS = [
    "webhook_copy_memory",
    "webhook_callbacks",
    "reconcile_open_jobs",
    "submit_batch",
    "end_to_end",
    "cold_start",
    "governor_drills",
    "batch_intake",
]


def main(argv: list[str]) -> int:
    selected = argv or BENCHMARKS
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    quiet_logs()
    tables: list[Table] = []
    for name in selected:
        module = importlib.import_module(f"bench.{name}")
        table: Table = module.run()
        print(table.render(), end="\n\n", flush=True)
        tables.append(table)
    if selected == BENCHMARKS:
        write_results(tables)
    return 1 if any("FAIL" in note for table in tables for note in table.notes) else 0


def write_results(tables: list[Table]) -> None:
    """bench/results.md: the tables of one full run, with what they were measured on."""
    cores = os.cpu_count()
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/__main__.py); every ratio is against a baseline measured in the same run.",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, {cores} CPU core(s), {platform.system()} {platform.release()}",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        "",
    ]
    for table in tables:
        lines += [f"## {table.title}", "", "```", table.render(), "```", ""]
    RESULTS.write_text("\n".join(lines))


def quiet_logs() -> None:
    """Only the tables: handlers' INFO logs and metrics, and moto's request log, would bury them.
    Set before the handlers are imported, since Powertools reads its level then."""
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
