"""Faults together, not one at a time: duplicate deliveries, throttling, dead letters, lost and repeated callbacks,
and the reconciler (with its dead-letter sweep) all running at once against the real handlers.

The drill of the hardening issue: no job may end `failed` while its Kling task is alive, every job ends final,
Kling never holds two tasks for one job. The full-scale version with every fault is `make chaos`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from devstack.stack.moto_server import MotoServer
from kling_pipeline.contract.status import JobStatus
from tests.integration.pipeline_drill import Pipeline, pipeline

JOBS = 24
MAX_RECEIVES = 2  # small: duplicates and throttled jobs reach the DLQ while their twins are still alive


@pytest.fixture
def drill(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(moto_server, monkeypatch, max_receive_count=MAX_RECEIVES) as running:
        yield running


def test_no_job_is_failed_while_its_kling_task_is_alive_when_every_fault_runs_at_once(drill: Pipeline) -> None:
    """Regression (hardening, drill): duplicates + dead letters + reconciles together."""
    drill.sim.set_faults(
        create_error_rate={"code": 1303, "rate": 0.3},
        create_accept_then_disconnect=3,
        callback_drop_rate=0.5,
        callback_duplicates=1,
        callback_reorder=True,
    )
    rng = random.Random(13)
    jobs = {f"drill-{i:02d}": rng.choice((1, 2)) for i in range(JOBS)}
    drill.send(
        *({"job_id": job_id, "prompt": "a lighthouse in a storm", "n": n} for job_id, n in jobs.items()), copies=2
    )

    with drill.running():
        # Time, not speed, is the budget: retries wait out SQS visibility and retry delays of a few seconds.
        drill.wait_settled(list(jobs), 120.0, "every job final and both queues empty")

    tasks = {task["task_info"]["external_task_id"]: task for task in drill.sim.tasks()}
    assert len(tasks) == len(drill.sim.tasks())  # never two tasks for one job
    outcomes: dict[str, int] = {}
    for job_id, n in jobs.items():
        record = drill.record(job_id)
        assert record is not None and record.status.is_final, (job_id, record)
        outcomes[record.status.value] = outcomes.get(record.status.value, 0) + 1
        task = tasks.get(job_id)
        if record.status is JobStatus.FAILED:
            # The point: a failed job's task, if Kling has one, has failed too (nothing billed runs on).
            assert task is None or task["task_status"] == "failed", (job_id, record.error, task)
        else:
            assert task is not None and record.kling_task_id == task["task_id"], job_id
            assert len(record.images or []) == n, job_id
    assert outcomes.get("succeeded", 0) > 0, outcomes  # the drill exercised the happy path too
