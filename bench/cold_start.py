"""Cold start of each handler: its import, then its first invocation's wiring, against a plain `import boto3`.

Each measurement is a fresh interpreter (this venv's Python, cwd = the repository) that imports the modules and
reports the import's wall time and its peak RSS (VmHWM) before and after it. For a handler it then calls the
module's `runtime()`, what its first invocation does before any record is handled (the environment validated,
boto3 clients and the Kling client built), and reports that too: the handler's part of a real cold start. No
call leaves the process: the bench's variables name values, not secrets by ARN. Every target is imported once
unmeasured first (bytecode caches written), then RUNS times round-robin; the table gives the medians, and each
ratio is the median of the rounds' ratios (a round's samples are taken moments apart, so a machine whose load
changes during the run skews them alike). Times are CPU time (process_time), which other processes sway less
than wall time. The environment is explicit and minimal: a region, Powertools' settings and dummy values for the
contract's variables.
"""

from __future__ import annotations

import os
import platform
import statistics

from bench import Table, child_output

RUNS = 9
# Issue #18's target for every handler's import, as a multiple of `import boto3` (the stretch goal is 1.5).
TARGET_RATIO = 2.0
BOTO3 = "boto3"
POWERTOOLS = "boto3 + aws_lambda_powertools + pydantic"
HANDLERS = ("functions.submit.app", "functions.webhook.app", "functions.ingest.app", "functions.reconcile.app")
TARGETS: dict[str, list[str]] = {
    BOTO3: ["boto3"],
    # `import pydantic` alone is lazy (pydantic 2 loads BaseModel on first use); a model needs pydantic.main.
    POWERTOOLS: ["boto3", "aws_lambda_powertools", "pydantic.main"],
    **{handler: [handler] for handler in HANDLERS},
}
BASELINES = (BOTO3, POWERTOOLS)
# Peak RSS is VmHWM, the high-water mark of this interpreter's own memory: ru_maxrss would carry the parent's
# peak over through fork and exec. A handler module (one that has `runtime`) is then wired as on its first call.
CHILD = """
import importlib, sys, time
def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
before = peak_kib()
started = time.process_time()
modules = [importlib.import_module(name) for name in sys.argv[1:]]
imported = time.process_time()
after_import = peak_kib()
for module in modules:
    if hasattr(module, "runtime"):
        module.runtime()
wired = time.process_time()
print(imported - started, wired - imported, before, after_import, peak_kib())
"""
ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Dummy credentials: building a client looks for some, and must not look beyond the environment.
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    # As template.yaml's Globals set it for every function.
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
    "POWERTOOLS_SERVICE_NAME": "bench",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_METRICS_NAMESPACE": "KlingPipeline",
    "JOBS_TABLE": "bench-jobs",
    "JOBS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/bench-jobs",
    "JOBS_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/bench-jobs-dlq",
    "INPUT_BUCKET": "bench-input",
    "IMAGES_BUCKET": "bench-images",
    "KLING_API_BASE_URL": "https://api.klingai.example",
    "KLING_API_KEY": "bench-key",
    "WEBHOOK_BASE_URL": "https://hooks.example.test/prod",
    "WEBHOOK_SECRET": "bench-webhook-secret",
}


class Sample:
    """One fresh interpreter: import and wiring seconds, and peak RSS (KiB) before, after importing, after wiring."""

    def __init__(self, line: str) -> None:
        imported, wired, before, after_import, after_wiring = line.split()
        self.import_ms = float(imported) * 1000
        self.wiring_ms = float(wired) * 1000
        self.before_mb = int(before) / 1024
        self.import_mb = int(after_import) / 1024
        self.wired_mb = int(after_wiring) / 1024


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
    return Sample(child_output(["-c", CHILD, *modules], env=env, timeout=120, what=f"importing {', '.join(modules)}"))


def _table(samples: dict[str, list[Sample]]) -> Table:
    table = Table(
        f"cold start: each handler's import and first-invocation wiring (median of {RUNS} fresh interpreters)",
        ["import", "import ms", "x boto3", "+ wiring ms", "total x boto3", "peak RSS MB", "added MB", "added x boto3"],
    )

    def median(label: str, value: str) -> float:
        return float(statistics.median(getattr(sample, value) for sample in samples[label]))

    def ratio(label: str, total: bool = False) -> float:
        """The median over rounds of this target's time / boto3's in the same round."""
        pairs = zip(samples[label], samples[BOTO3], strict=True)
        return float(
            statistics.median(
                (sample.import_ms + (sample.wiring_ms if total else 0)) / boto3.import_ms for sample, boto3 in pairs
            )
        )

    boto3_added = median(BOTO3, "import_mb") - median(BOTO3, "before_mb")
    over: list[str] = []
    for label in samples:
        import_ms, wiring_ms = median(label, "import_ms"), median(label, "wiring_ms")
        added = median(label, "wired_mb") - median(label, "before_mb")
        import_ratio = ratio(label)
        if label in HANDLERS and import_ratio > TARGET_RATIO:
            over.append(f"{label} {import_ratio:.2f}x")
        table.rows.append(
            [
                f"{label} (baseline)" if label in BASELINES else label,
                f"{import_ms:.0f}",
                f"{import_ratio:.2f}",
                f"{wiring_ms:.0f}" if label in HANDLERS else "-",
                f"{ratio(label, total=True):.2f}",
                f"{median(label, 'wired_mb'):.1f}",
                f"{added:.1f}",
                f"{added / boto3_added:.2f}",
            ]
        )
    interpreter = statistics.median(s.before_mb for runs in samples.values() for s in runs)
    verdict = f"FAIL: over {TARGET_RATIO}x: {', '.join(over)}" if over else f"every handler's import <= {TARGET_RATIO}x"
    table.notes += [
        "x boto3: this import / `import boto3` alone, same round (median of the rounds). + wiring: the handler's "
        "`runtime()`, what its first invocation builds (environment, boto3 clients, Kling client) before handling "
        "anything; total x boto3: import and wiring together / `import boto3`. Times: CPU ms.",
        f"added MB: peak RSS after import and wiring less before them (the bare interpreter: {interpreter:.1f} MB).",
        "pydantic is imported as pydantic.main (BaseModel): `import pydantic` alone defers it.",
        f"Target: every handler's import <= {TARGET_RATIO}x (issue #18); {verdict}.",
        f"Measured with Python {platform.python_version()} on {platform.machine()}; "
        "Lambda runs Python 3.13 on arm64 (template.yaml), so absolute numbers there differ.",
    ]
    return table
