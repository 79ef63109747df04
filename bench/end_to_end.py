"""End to end: JOBS text-to-image jobs through the local stack, enqueue to `succeeded`, against Kling's own time.

The local stack (`python -m devstack.stack up`: template.yaml on moto, the Kling simulator, the real handlers on
their triggers) runs in its own process, as `make demo` runs it, with the simulator's task time at its defaults
(0.3 s to `processing`, 0.5 s more to `succeed`), no batching window (the template's 5 s would hold the
last, part-filled batch) and the reconciler every RECONCILE_INTERVAL seconds, not the template's 5 minutes: a
callback Kling gave up on (the simulator waits 2 s for an answer) is picked up in seconds. This process sends
the jobs one SendMessage each, as a producer would, then watches the table. A job's latency is from its
SendMessage to its record's `succeeded` write (`updated_at`, the same machine's clock); throughput is jobs over
the time from the first send to the last success.

The floor is the simulator's task time: no job can finish sooner after Kling accepted it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from bench import Table
from devstack.cli.jobs import Jobs
from devstack.stack.control import spawn_stack, stop_process, wait_ready
from devstack.stack.target import local_target
from kling_pipeline.contract.status import JobStatus

JOBS = 200
PROCESSING_DELAY, SUCCEED_DELAY = 0.3, 0.5
RECONCILE_INTERVAL = 5
TIMEOUT_SECONDS = 600.0
PROMPT = "a lighthouse on a cliff at dawn, oil painting"


def run() -> Table:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as work:
        state_path = Path(work) / "state.json"
        timing = [f"--processing-delay={PROCESSING_DELAY}", f"--succeed-delay={SUCCEED_DELAY}"]
        overrides = ["--batching-window=0", f"--reconcile-interval={RECONCILE_INTERVAL}", *timing]
        process = spawn_stack(state_path, Path(work) / "stack.log", overrides)
        try:
            wait_ready(state_path, process, timeout=120)
            sent, finished, statuses = _drive(Jobs(local_target(state_path)))
        finally:
            stop_process(process)
    return _table(sent, finished, statuses)


def _drive(jobs: Jobs) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Send every job, then poll until all are final; (send time, success time, status) per job id."""
    tag = time.strftime("%H%M%S")
    sent: dict[str, float] = {}
    for i in range(JOBS):
        job_id = f"e2e-{tag}-{i:03d}"
        sent[job_id] = time.time()
        jobs.submit({"job_id": job_id, "prompt": PROMPT, "n": 1})
    deadline = time.monotonic() + TIMEOUT_SECONDS
    statuses: dict[str, str] = {}
    finished: dict[str, float] = {}
    while time.monotonic() < deadline:
        records = {record.job_id: record for record in jobs.recent(limit=None) if record.job_id in sent}
        statuses = {
            job_id: f"{record.status.value}: {record.error.code}" if record.error else record.status.value
            for job_id, record in records.items()
        }
        finished = {
            job_id: datetime.fromisoformat(record.updated_at).timestamp()
            for job_id, record in records.items()
            if record.status is JobStatus.SUCCEEDED
        }
        if len(records) == JOBS and all(record.status.is_final for record in records.values()):
            break
        time.sleep(0.5)
    return sent, finished, statuses


def _table(sent: dict[str, float], finished: dict[str, float], statuses: dict[str, str]) -> Table:
    table = Table(
        f"end to end: {JOBS} text-to-image jobs (n=1) through the local stack, enqueue to succeeded",
        ["", "seconds", "x floor"],
    )
    floor = PROCESSING_DELAY + SUCCEED_DELAY
    latencies = sorted(finished[job_id] - sent[job_id] for job_id in finished)
    if not latencies:
        table.notes.append(f"FAIL: no job succeeded ({statuses})")
        return table
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    for label, value in (("p50", cuts[49]), ("p95", cuts[94]), ("p99", cuts[98]), ("max", latencies[-1])):
        table.rows.append([f"latency {label}", f"{value:.2f}", f"{value / floor:.1f}"])
    table.rows.append(["floor: the simulator's task time", f"{floor:.2f}", "1.0"])
    span = max(finished.values()) - min(sent.values())
    table.notes.append(
        f"throughput: {len(finished)} jobs in {span:.1f} s = {len(finished) / span:.1f} jobs/s "
        f"(sending took {max(sent.values()) - min(sent.values()):.1f} s)."
    )
    if len(finished) < JOBS:
        others = Counter(status for job_id, status in statuses.items() if job_id not in finished)
        table.notes.append(f"FAIL: {JOBS - len(finished)} job(s) did not succeed: {dict(others)}")
    table.notes.append(
        "The stack's one process hosts moto, the simulator and every handler: their CPU shares one interpreter, "
        "so the latency above the floor is mostly the emulator's own work."
    )
    return table
