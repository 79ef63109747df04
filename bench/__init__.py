"""Benchmarks: `python -m bench` (or `make bench`) runs every one and prints its table.

A benchmark is a module with `run() -> Table`; list it in `bench.__main__.BENCHMARKS`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_output(
    args: list[str], *, env: Mapping[str, str], timeout: float, what: str, stdin: str | None = None
) -> str:
    """The last line a child Python process (run from the repository's root) printed. Measurements of imports and
    memory need a fresh process: this one has imported and allocated too much already."""
    completed = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return completed.stdout.strip().splitlines()[-1]


@dataclass
class Table:
    """A titled table of results, with notes (verdicts, ratios, how it was measured) printed below it."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        widths = [max(len(str(cell)) for cell in column) for column in zip(self.headers, *self.rows, strict=False)]
        line = "  ".join("-" * width for width in widths)

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                str(cell).rjust(width) if i else str(cell).ljust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            )

        out = [self.title, "=" * len(self.title), fmt(self.headers), line, *(fmt(row) for row in self.rows)]
        out += ["", *self.notes] if self.notes else []
        return "\n".join(out)
