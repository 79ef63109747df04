"""Run every benchmark and print its table: `python -m bench [name ...]`."""

from __future__ import annotations

import importlib
import logging
import os
import sys

from bench import Table

BENCHMARKS = [
    "webhook_copy_memory",
    "reconcile_open_jobs",
    "submit_batch",
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
    failed = False
    for name in selected:
        module = importlib.import_module(f"bench.{name}")
        table: Table = module.run()
        print(table.render(), end="\n\n", flush=True)
        failed = failed or any("FAIL" in note for note in table.notes)
    return 1 if failed else 0


def quiet_logs() -> None:
    """Only the tables: handlers' INFO logs and metrics, and moto's request log, would bury them.
    Set before the handlers are imported, since Powertools reads its level then."""
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
