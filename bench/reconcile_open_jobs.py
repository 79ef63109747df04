"""How long one reconcile run takes for 100 open jobs, by scenario and RECONCILE_CONCURRENCY.

moto (server mode) is AWS and the Kling simulator is Kling, both on loopback, with an added latency on every
Kling API call (LATENCY_MS) to stand in for the network to Kling or a relay. Each measurement creates 100 job
records and their Kling tasks, then times one `lambda_handler` call with a scheduled event:
- `lost callbacks`: jobs `submitted`, tasks `succeed` (n=1, 512x512 PNG): query + copy + finish each job;
- `still running`: jobs `processing`, tasks still processing: query + stamp each job;
- `pending, unknown`: jobs `pending`, no task at Kling: look-up + stamp each job.

Where the time goes: the CPU time of this one process (moto, the simulator and the handler share it) is
measured beside the wall time. When the CPU time approaches the wall time, the run is bound by this single
interpreter's CPU (one GIL for the emulator and the pipeline), not by Kling's latency: more concurrency cannot
help there, whatever the pipeline does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bench import Table
from devstack.events.lambda_context import LambdaContext
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.environment import environment_set
from devstack.stack.moto_server import MotoServer
from devstack.stack.runner.scheduler import scheduled_event
from devstack.stack.template_stack import create_resources
from functions.reconcile import app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.auth import BearerKeyAuth
from kling_pipeline.kling.client import KlingClient

JOBS = 100
LATENCY_MS = 50
CONCURRENCY = (1, 4, 8)
API_KEY = "bench-key"
SCENARIOS = ("lost callbacks", "still running", "pending, unknown")


def run() -> Table:
    moto = MotoServer().start()
    moto.apply_environment(os.environ)
    table = Table(
        f"reconcile: one run over {JOBS} open jobs (Kling latency {LATENCY_MS} ms per call)",
        [
            "scenario",
            *(f"concurrency {c}" for c in CONCURRENCY),
            *(f"speed-up x{c}" for c in CONCURRENCY[1:]),
            *(f"CPU s x{c}" for c in CONCURRENCY),
        ],
    )
    try:
        for scenario in SCENARIOS:
            row = [scenario]
            timings, cpu = [], []
            for concurrency in CONCURRENCY:
                seconds, cpu_seconds, summary = _measure(moto, scenario, concurrency)
                timings.append(seconds)
                cpu.append(f"{cpu_seconds:.2f}")
                row.append(f"{seconds:.2f} s")
                expected = {"lost callbacks": "succeeded", "still running": "unchanged"}.get(scenario, "waiting")
                if summary["jobs"] != {expected: JOBS}:
                    table.notes.append(f"FAIL: {scenario}, concurrency {concurrency}: {summary['jobs']}")
            # The baseline is concurrency 1 (one job at a time), measured in the same run.
            row += [f"{timings[0] / seconds:.2f}" for seconds in timings[1:]]
            table.rows.append(row + cpu)
    finally:
        moto.stop()
    table.notes.append(
        "speed-up: time at concurrency 1 / time at concurrency N, same run. CPU s: this process's CPU time during "
        "the run (moto, the simulator and the handler together).\n"
        "Default RECONCILE_CONCURRENCY is 4; RECONCILE_MAX_JOBS_PER_RUN (200) bounds a run, the function's 300 s "
        "timeout less RECONCILE_SAFETY_MARGIN_SECONDS (30) bounds its time."
    )
    return table


def _measure(moto: MotoServer, scenario: str, concurrency: int) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds, this process's CPU seconds, and the run's summary."""
    moto.reset()
    resources = create_resources("bench-reconcile")
    sim = KlingSimulator(SimulatorConfig(api_key=API_KEY, auto_advance=False)).start()
    env = {
        **resources.environment(),
        "KLING_API_BASE_URL": sim.base_url,
        "KLING_API_KEY": API_KEY,
        "IMAGE_HOST_ALLOWLIST": f"127.0.0.1:{sim.port}",
        "RECONCILE_PENDING_GRACE_SECONDS": "0",
        "RECONCILE_STALE_SECONDS": "0",
        "RECONCILE_CONCURRENCY": str(concurrency),
    }
    app.runtime.cache_clear()
    with environment_set(env):
        try:
            _SETUP[scenario](resources.table, sim)
            sim.set_faults(latency_ms=LATENCY_MS)
            started, cpu = time.perf_counter(), time.process_time()
            summary: dict[str, Any] = app.lambda_handler(
                scheduled_event("bench", "us-east-1"), LambdaContext("reconcile", timeout_seconds=300)
            )
            return time.perf_counter() - started, time.process_time() - cpu, summary
        finally:
            app.runtime().reconciler.close()
            app.runtime.cache_clear()
            sim.stop()


def _jobs_with_tasks(final_status: str, job_status: JobStatus) -> Callable[[str, KlingSimulator], None]:
    def setup(table: str, sim: KlingSimulator) -> None:
        store = DynamoJobRecords(table)
        with KlingClient(sim.base_url, BearerKeyAuth(API_KEY)) as kling:
            for i in range(JOBS):
                job_id = f"bench-{i:03d}"
                task = kling.create_task({"prompt": "a bench", "n": 1, "external_task_id": job_id})
                sim.advance(task.task_id, "processing")
                if final_status != "processing":
                    sim.advance(task.task_id, final_status)
                store.create(JobRecord(job_id=job_id, status=job_status, kling_task_id=task.task_id))

    return setup


def _pending_jobs(table: str, sim: KlingSimulator) -> None:
    store = DynamoJobRecords(table)
    for i in range(JOBS):
        store.create(JobRecord(job_id=f"bench-{i:03d}", status=JobStatus.PENDING))


_SETUP = {
    "lost callbacks": _jobs_with_tasks("succeed", JobStatus.SUBMITTED),
    "still running": _jobs_with_tasks("processing", JobStatus.PROCESSING),
    "pending, unknown": _pending_jobs,
}
