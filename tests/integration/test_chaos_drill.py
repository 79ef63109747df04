"""The fault drill of issue #18 at small N: every fault at once (tests/integration/chaos.py), every must held.
`make chaos` runs it with 1,000 jobs. The time bound is generous: this asserts what came out, not how fast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.stack.moto_server import MotoServer
from kling_pipeline.contract.status import JobStatus
from tests.integration.chaos import drill_jobs, drill_pipeline, run_drill
from tests.integration.pipeline_drill import Pipeline

JOBS = 40


@pytest.fixture
def world(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with drill_pipeline(moto_server, monkeypatch) as running:
        yield running


def test_every_job_ends_final_once_created_and_announced_when_every_fault_runs_at_once(world: Pipeline) -> None:
    report = run_drill(world, drill_jobs(JOBS), timeout=240.0)

    print(report.table().render())
    assert report.violations() == []
    assert report.statuses[JobStatus.SUCCEEDED.value] > 0  # the drill went through the happy path too
