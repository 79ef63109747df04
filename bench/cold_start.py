"""Import ("init") time and memory of each handler module, against a plain boto3 and a minimal Powertools handler.

Each measurement is a fresh interpreter (this venv's Python, cwd = the repository) that imports the modules and
reports the import's wall time and its peak RSS (VmHWM) before and after it. Only the import is measured: the
handlers build their clients (boto3 service models, Kling session) lazily on the first invocation, which is not
part of these numbers. Every target is imported once unmeasured first (bytecode caches written), then RUNS
times round-robin; the table gives the medians. The environment is explicit and minimal: a region,
Powertools' settings and dummy values for the contract's variables.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from bench import Table

RUNS = 5
REPO = Path(__file__).resolve().parent.parent
BOTO3 = "boto3"
POWERTOOLS = "boto3 + aws_lambda_powertools + pydantic"
TARGETS: dict[str, list[str]] = {
    BOTO3: ["boto3"],
    # `import pydantic` alone is lazy (pydantic 2 loads BaseModel on first use); a model needs pydantic.main.
    POWERTOOLS: ["boto3", "aws_lambda_powertools", "pydantic.main"],
    "functions.submit.app": ["functions.submit.app"],
    "functions.webhook.app": ["functions.webhook.app"],
    "functions.ingest.app": ["functions.ingest.app"],
    "functions.reconcile.app": ["functions.reconcile.app"],
}
BASELINES = (BOTO3, POWERTOOLS)
# Peak RSS is VmHWM, the high-water mark of this interpreter's own memory: ru_maxrss would carry the parent's
# peak over through fork and exec.
CHILD = """
import importlib, sys, time
def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
before = peak_kib()
started = time.perf_counter()
for name in sys.argv[1:]:
    importlib.import_module(name)
seconds = time.perf_counter() - started
print(seconds, before, peak_kib())
"""
ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_SERVICE_NAME": "bench",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_METRICS_NAMESPACE": "KlingPipeline",
    "JOBS_TABLE": "bench-jobs",
    "JOBS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/bench-jobs",
    "INPUT_BUCKET": "bench-input",
    "IMAGES_BUCKET": "bench-images",
    "KLING_API_BASE_URL": "https://api.klingai.example",
    "KLING_API_KEY": "bench-key",
    "WEBHOOK_BASE_URL": "https://hooks.example.test/prod",
    "WEBHOOK_SECRET": "bench-webhook-secret",
}


class Sample:
    """One import in a fresh interpreter: seconds, and peak RSS (KiB) before and after it."""

    def __init__(self, line: str) -> None:
        seconds, before, after = line.split()
        self.ms = float(seconds) * 1000
        self.before_mb = int(before) / 1024
        self.after_mb = int(after) / 1024


def run() -> Table:
    for modules in TARGETS.values():
        _sample(modules)  # unmeasured: writes bytecode caches, warms the page cache
    samples: dict[str, list[Sample]] = {label: [] for label in TARGETS}
    for _ in range(RUNS):
        for label, modules in TARGETS.items():
            samples[label].append(_sample(modules))
    return _table(samples)


def _sample(modules: list[str]) -> Sample:
    env = {"PATH": os.environ.get("PATH", os.defpath), **ENVIRONMENT}
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, *modules],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"importing {', '.join(modules)} failed ({completed.returncode}):\n{completed.stderr}")
    return Sample(completed.stdout.strip().splitlines()[-1])


def _table(samples: dict[str, list[Sample]]) -> Table:
    table = Table(
        f"cold start: import time and memory of each handler module (median of {RUNS} fresh interpreters)",
        ["import", "import ms", "x boto3", "peak RSS MB", "added MB", "added x boto3"],
    )
    medians = {
        label: (
            statistics.median(s.ms for s in runs),
            statistics.median(s.after_mb for s in runs),
            statistics.median(s.after_mb - s.before_mb for s in runs),
        )
        for label, runs in samples.items()
    }
    boto3_ms, _, boto3_added = medians[BOTO3]
    for label, (ms, peak, added) in medians.items():
        table.rows.append(
            [
                f"{label} (baseline)" if label in BASELINES else label,
                f"{ms:.0f}",
                f"{ms / boto3_ms:.2f}",
                f"{peak:.1f}",
                f"{added:.1f}",
                f"{added / boto3_added:.2f}",
            ]
        )
    interpreter = statistics.median(s.before_mb for runs in samples.values() for s in runs)
    table.notes += [
        "x boto3: this import / `import boto3` alone, same run. added MB: peak RSS after the import less before it "
        f"(the bare interpreter: {interpreter:.1f} MB).",
        "Import only: the handlers build their clients on the first invocation, which adds to a real cold start.",
        "pydantic is imported as pydantic.main (BaseModel): `import pydantic` alone defers it.",
        f"Measured with Python {platform.python_version()} on {platform.machine()}; "
        "Lambda runs Python 3.13 on arm64 (template.yaml), so absolute numbers there differ.",
    ]
    return table
