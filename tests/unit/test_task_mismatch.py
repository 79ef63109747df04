"""Which Kling task reports belong to a job (pure rule of kling_pipeline.progress)."""

from __future__ import annotations

import pytest

from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.progress import task_mismatch


def _task(task_id: str = "t-1", external: str | None = "job-1") -> KlingTask:
    return KlingTask(task_id=task_id, task_status="processing", external_task_id=external)


def _job(task_id: str | None) -> JobRecord:
    status = JobStatus.PENDING if task_id is None else JobStatus.SUBMITTED
    return JobRecord(job_id="job-1", status=status, kling_task_id=task_id)


def test_the_recorded_task_matches() -> None:
    assert task_mismatch(_job("t-1"), _task("t-1", external=None)) is None


def test_another_task_id_does_not_match_even_with_our_external_id() -> None:
    assert task_mismatch(_job("t-1"), _task("t-2")) == "task_id: must be this job's task t-1 (got t-2)"


def test_a_job_without_a_task_id_accepts_its_external_id() -> None:
    assert task_mismatch(_job(None), _task("t-9", external="job-1")) is None


@pytest.mark.parametrize("external", ["job-2", None])
def test_a_job_without_a_task_id_refuses_any_other_or_missing_external_id(external: str | None) -> None:
    problem = task_mismatch(_job(None), _task("t-9", external=external))
    assert problem == f"external_task_id: must be this job's id job-1 (got {external})"


def test_a_task_read_by_external_id_from_the_query_api_may_lack_the_echo() -> None:
    assert task_mismatch(_job(None), _task("t-9", external=None), from_query_api=True) is None
    assert task_mismatch(_job(None), _task("t-9", external="job-2"), from_query_api=True) is not None
