"""JobProgress with in-memory ports: Kling's reports move a job forward only, a callback's `succeed` is confirmed
with Kling before any image is copied, copy failures keep the job `copying`, and a job is final once."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from kling_pipeline.contract.errors import ErrorCode
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.errors import KlingRetryableError
from kling_pipeline.kling.task import KlingImage, KlingTask
from kling_pipeline.progress import JobProgress, Outcome, TaskMismatchError
from tests.fakes import FakeCopier, FakeKling, MemoryRecords, copy_error, copy_result, kling_task


@dataclass
class World:
    records: MemoryRecords
    kling: FakeKling
    copier: FakeCopier
    progress: JobProgress
    finals: list[JobRecord] = field(default_factory=list)

    def job(self) -> JobRecord:
        record = self.records.get("job-1")
        assert record is not None
        return record


def world(status: JobStatus = JobStatus.SUBMITTED, *, task_id: str | None = "t-1", **fields: Any) -> World:
    finals: list[JobRecord] = []
    records = MemoryRecords(on_final=finals.append)
    kling, copier = FakeKling(), FakeCopier()
    records.create(JobRecord(job_id="job-1", status=status, kling_task_id=task_id, **fields))
    return World(records, kling, copier, JobProgress(records, kling, copier), finals)


def succeeded(task_id: str = "t-1", *, images: int = 2, updated_at: int | None = 5_000) -> KlingTask:
    return kling_task(task_id, "succeed", images=images, updated_at=updated_at)


def from_elsewhere(task: KlingTask) -> KlingTask:
    """The task as a forged or garbled callback could describe it: its image URLs point somewhere else."""
    images = [KlingImage(index=image.index, url=f"https://attacker.test/{image.index}.png") for image in task.images]
    return task.model_copy(update={"images": images})


# -- submitted / processing ------------------------------------------------------------------------------------


def test_submitted_then_processing_reports_advance_the_job() -> None:
    w = world(JobStatus.PENDING, task_id=None)
    # Binding a job to a task is confirmed with Kling (hardening #5): Kling knows t-1 by the job's id.
    w.kling.add(kling_task("t-1", "submitted", updated_at=1_000, external="job-1"))
    result = w.progress.apply(w.job(), kling_task("t-1", "submitted", updated_at=1_000))
    assert result.outcome is Outcome.ADVANCED
    job = w.job()
    assert (job.status, job.kling_task_id, job.kling_status, job.kling_updated_at) == (
        JobStatus.SUBMITTED,
        "t-1",
        "submitted",
        1_000,
    )
    result = w.progress.apply(w.job(), kling_task("t-1", "processing", updated_at=2_000))
    assert result.outcome is Outcome.ADVANCED
    assert result.record == w.job()
    assert (w.job().status, w.job().kling_status, w.job().kling_updated_at) == (
        JobStatus.PROCESSING,
        "processing",
        2_000,
    )
    assert w.copier.calls == [] and w.finals == []


def test_a_report_older_than_the_last_one_applied_is_a_no_op() -> None:
    w = world(JobStatus.SUBMITTED, kling_status="submitted", kling_updated_at=2_000)
    before = w.job()
    result = w.progress.apply(before, kling_task("t-1", "processing", updated_at=1_999))
    assert result.outcome is Outcome.UNCHANGED
    assert w.job() == before


def test_a_duplicate_report_is_a_no_op() -> None:
    w = world(JobStatus.SUBMITTED)
    report = kling_task("t-1", "processing", updated_at=2_000)
    assert w.progress.apply(w.job(), report).outcome is Outcome.ADVANCED
    after_first = w.job()
    assert w.progress.apply(after_first, report).outcome is Outcome.UNCHANGED
    assert w.job() == after_first


@pytest.mark.parametrize("status", [JobStatus.COPYING, JobStatus.SUCCEEDED])
def test_a_processing_report_after_succeed_changes_nothing(status: JobStatus) -> None:
    w = world(status, kling_status="succeed", kling_updated_at=5_000)
    before = w.job()
    result = w.progress.apply(before, kling_task("t-1", "processing", updated_at=6_000))  # late, yet newer-stamped
    assert result.outcome is Outcome.UNCHANGED
    assert w.job() == before


def test_an_unknown_kling_status_changes_nothing() -> None:
    w = world(JobStatus.SUBMITTED)
    before = w.job()
    assert w.progress.apply(before, kling_task("t-1", "queued_somewhere")).outcome is Outcome.UNCHANGED
    assert w.job() == before


# -- a callback's succeed is read back from Kling --------------------------------------------------------------


def test_a_callbacks_succeed_is_read_back_and_only_klings_image_urls_are_copied() -> None:
    w = world(JobStatus.PROCESSING)
    confirmed = w.kling.add(succeeded())
    result = w.progress.apply(w.job(), from_elsewhere(confirmed))  # a callback body: from_query_api=False
    assert result.outcome is Outcome.SUCCEEDED
    assert w.kling.called("get_task") == ["t-1"]
    [(job_id, copied_task)] = w.copier.calls
    assert job_id == "job-1"
    assert [image.url for image in copied_task.images] == [image.url for image in confirmed.images]


def test_a_failed_read_back_keeps_the_job_copying_with_kling_query_failed() -> None:
    w = world(JobStatus.PROCESSING)
    w.kling.tasks["t-1"] = KlingRetryableError("read timed out", retry_after=1.0)
    result = w.progress.apply(w.job(), succeeded())
    assert result.outcome is Outcome.COPY_FAILED
    assert result.error is not None and result.error.code is ErrorCode.KLING_QUERY_FAILED
    job = w.job()
    assert job.status is JobStatus.COPYING
    assert job.copy_error is not None and job.copy_error.code is ErrorCode.KLING_QUERY_FAILED
    assert "read timed out" in job.copy_error.message
    assert job.copy_attempts == 1
    assert w.copier.calls == [] and w.finals == []


def test_kling_reporting_another_status_than_the_callback_is_kling_status_disagrees() -> None:
    w = world(JobStatus.PROCESSING)
    w.kling.add(kling_task("t-1", "processing"))
    result = w.progress.apply(w.job(), succeeded())
    assert result.outcome is Outcome.COPY_FAILED
    job = w.job()
    assert job.status is JobStatus.COPYING
    assert job.copy_error is not None and job.copy_error.code is ErrorCode.KLING_STATUS_DISAGREES
    assert "'processing'" in job.copy_error.message
    assert w.copier.calls == []


def test_kling_now_saying_failed_fails_the_job() -> None:
    w = world(JobStatus.PROCESSING)
    w.kling.add(kling_task("t-1", "failed", message="content policy"))
    result = w.progress.apply(w.job(), succeeded())
    assert result.outcome is Outcome.FAILED
    job = w.job()
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.message) == (ErrorCode.KLING_TASK_FAILED, "content policy")
    assert job.kling_status == "failed"
    assert w.copier.calls == []
    assert w.finals == [job]


# -- copying ---------------------------------------------------------------------------------------------------


def test_a_copy_failure_keeps_the_job_copying_with_the_error_and_counts_the_attempt() -> None:
    w = world(JobStatus.PROCESSING)
    url = "https://cdn.klingai.com/t-1/0.png"
    w.copier.results = [copy_error(http_status=503, url=url), copy_error(http_status=404, url=url)]
    report = succeeded()
    first = w.progress.apply(w.job(), report, from_query_api=True)
    assert first.outcome is Outcome.COPY_FAILED
    job = w.job()
    assert job.status is JobStatus.COPYING
    assert job.copy_error is not None and (job.copy_error.http_status, job.copy_error.url) == (503, url)
    assert job.copy_attempts == 1
    second = w.progress.apply(job, report, from_query_api=True)  # a retry of the job, now copying
    assert second.outcome is Outcome.COPY_FAILED
    job = w.job()
    assert job.copy_error is not None and job.copy_error.http_status == 404
    assert (job.status, job.copy_attempts, len(w.copier.calls)) == (JobStatus.COPYING, 2, 2)
    assert w.finals == []


def test_a_successful_copy_stores_the_images_clears_the_copy_error_and_counts_the_attempts() -> None:
    w = world(JobStatus.PROCESSING)
    w.copier.results = [copy_error(http_status=503, url="https://cdn.klingai.com/t-1/0.png")]
    report = succeeded(images=2, updated_at=7_000)
    w.progress.apply(w.job(), report, from_query_api=True)
    deadline = 123.0
    result = w.progress.apply(w.job(), report, from_query_api=True, deadline=deadline)
    assert result.outcome is Outcome.SUCCEEDED
    assert (result.images_copied, result.bytes_copied) == (2, 2_000)
    job = w.job()
    assert job.status is JobStatus.SUCCEEDED
    assert job.images == copy_result("job-1", report).images
    assert job.copy_error is None
    assert job.copy_attempts == 2
    assert (job.kling_status, job.kling_updated_at) == ("succeed", 7_000)
    assert w.copier.deadlines[-1] == deadline
    assert w.finals == [job]


def test_a_succeed_from_the_query_api_is_not_read_back() -> None:
    w = world(JobStatus.SUBMITTED)
    assert w.progress.apply(w.job(), succeeded(), from_query_api=True).outcome is Outcome.SUCCEEDED
    assert w.kling.calls == []


def test_a_failed_report_fails_a_copying_job_and_clears_its_copy_error() -> None:
    w = world(JobStatus.COPYING, copy_error={"code": "http_error", "message": "HTTP 503"}, copy_attempts=1)
    w.kling.add(kling_task("t-1", "failed"))  # a failure is confirmed with Kling (hardening #5)
    result = w.progress.apply(w.job(), kling_task("t-1", "failed"))
    assert result.outcome is Outcome.FAILED
    job = w.job()
    assert (job.status, job.copy_error) == (JobStatus.FAILED, None)
    assert job.error is not None and job.error.message == "Kling reported the task failed without a reason"


# -- whose report, and once final -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "report"),
    [
        ("t-1", kling_task("t-2", "processing")),
        ("t-1", kling_task("t-2", "succeed", images=1)),
        (None, kling_task("t-9", "processing", external="job-2")),
    ],
)
def test_another_tasks_report_is_refused(recorded: str | None, report: KlingTask) -> None:
    w = world(JobStatus.SUBMITTED if recorded else JobStatus.PENDING, task_id=recorded)
    before = w.job()
    with pytest.raises(TaskMismatchError):
        w.progress.apply(before, report)
    assert w.job() == before
    assert w.copier.calls == [] and w.kling.calls == []


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED])
@pytest.mark.parametrize("report", ["processing", "succeed", "failed"])
def test_a_final_job_is_unchanged(status: JobStatus, report: str) -> None:
    w = world(status)
    w.finals.clear()  # the create of the final record announced it
    before = w.job()
    result = w.progress.apply(before, kling_task("t-1", report, images=1))
    assert result.outcome is Outcome.UNCHANGED
    assert w.job() == before
    assert w.copier.calls == [] and w.kling.calls == [] and w.finals == []


def test_duplicate_succeed_reports_copy_once_and_announce_once() -> None:
    w = world(JobStatus.PROCESSING)
    seen = w.job()  # both deliveries read the job before either applied
    report = succeeded()
    w.kling.add(report)
    assert w.progress.apply(seen, report).outcome is Outcome.SUCCEEDED
    assert w.progress.apply(seen, report).outcome is Outcome.UNCHANGED
    assert len(w.copier.calls) == 1
    assert len(w.finals) == 1


def test_concurrent_succeed_reports_make_the_job_final_exactly_once() -> None:
    reporters = 6
    w = world(JobStatus.PROCESSING)
    seen = w.job()
    report = w.kling.add(succeeded())
    # Every reporter is inside the copy before any may finish: all of them race for the final write.
    inside = threading.Barrier(reporters, timeout=30)
    w.copier.before_copy = inside.wait
    outcomes: list[Outcome] = []
    failures: list[BaseException] = []

    def deliver(from_query_api: bool) -> None:
        try:
            outcomes.append(w.progress.apply(seen, report, from_query_api=from_query_api).outcome)
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise be lost
            failures.append(exc)

    threads = [threading.Thread(target=deliver, args=(i % 2 == 0,)) for i in range(reporters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(outcomes) == sorted([Outcome.SUCCEEDED] + [Outcome.UNCHANGED] * (reporters - 1))
    assert len(w.copier.calls) == reporters
    assert len(w.finals) == 1
    assert w.finals[0] == w.job()
    assert w.job().status is JobStatus.SUCCEEDED
