"""The reconciler with in-memory ports and a fixed clock: which open jobs are due, what Kling's answer does to each,
when a job is given up with a reason, and how one run is bounded (per-run limit, deadline, failures)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kling_pipeline.contract.errors import ErrorCode
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import ReconcileOptions
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.errors import KlingRetryableError
from kling_pipeline.ports import DeadLetter
from kling_pipeline.progress import JobProgress
from kling_pipeline.reconcile.dead_letters import DeadLetterOutcome, DeadLetterSweeper
from kling_pipeline.reconcile.reconciler import JobOutcome, JobReconciler, Reconciler, RunReport
from tests.fakes import FakeCopier, FakeKling, FixedClock, MemoryDeadLetterQueue, MemoryRecords, copy_error, kling_task

GRACE_MINUTES, STALE_MINUTES, MAX_AGE_HOURS = 5, 10, 24
URL = "https://cdn.klingai.com/t-1/0.png"


def options(**overrides: Any) -> ReconcileOptions:
    return ReconcileOptions(
        reconcile_pending_grace_seconds=GRACE_MINUTES * 60,
        reconcile_stale_seconds=STALE_MINUTES * 60,
        reconcile_max_job_age_seconds=MAX_AGE_HOURS * 3600,
        reconcile_max_copy_attempts=3,
        **overrides,
    )


@dataclass
class World:
    clock: FixedClock
    records: MemoryRecords
    kling: FakeKling
    copier: FakeCopier
    options: ReconcileOptions
    finals: list[JobRecord] = field(default_factory=list)

    @property
    def progress(self) -> JobProgress:
        return JobProgress(self.records, self.kling, self.copier)

    @property
    def job_reconciler(self) -> JobReconciler:
        return JobReconciler(self.records, self.kling, self.progress, self.options, clock=self.clock.now)

    def add(
        self,
        job_id: str,
        status: JobStatus,
        *,
        quiet_minutes: float,
        age_hours: float = 1.0,
        task_id: str | None = "t-1",
        **fields: Any,
    ) -> JobRecord:
        record = JobRecord(
            job_id=job_id,
            status=status,
            kling_task_id=None if status is JobStatus.PENDING else task_id,
            created_at=self.clock.ago(hours=age_hours),
            updated_at=self.clock.ago(minutes=quiet_minutes),
            **fields,
        )
        assert self.records.create(record)
        return record

    def reconcile(self, job_id: str) -> tuple[JobOutcome, str | None, JobRecord]:
        job = self.records.get(job_id)
        assert job is not None
        report = self.job_reconciler.reconcile(job, deadline=time.monotonic() + 60)
        after = self.records.get(job_id)
        assert after is not None
        return report.outcome, report.detail, after


def world(**overrides: Any) -> World:
    clock = FixedClock()
    finals: list[JobRecord] = []
    records = MemoryRecords(on_final=finals.append, clock=clock.iso)
    return World(clock, records, FakeKling(), FakeCopier(), options(**overrides), finals)


# -- pending: looked up by external id ---------------------------------------------------------------------------


def test_a_pending_job_past_the_grace_period_is_looked_up_and_adopted() -> None:
    w = world()
    w.add("job-1", JobStatus.PENDING, quiet_minutes=GRACE_MINUTES)
    w.kling.add(kling_task("t-7", "submitted", external="job-1", updated_at=1_000))
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.ADVANCED
    assert w.kling.called("find_task_by_external_id") == ["job-1"]
    assert (job.status, job.kling_task_id, job.kling_status) == (JobStatus.SUBMITTED, "t-7", "submitted")


def test_a_pending_job_kling_has_no_task_for_waits_and_is_stamped() -> None:
    w = world()
    w.add("job-1", JobStatus.PENDING, quiet_minutes=GRACE_MINUTES + 1)
    outcome, detail, job = w.reconcile("job-1")
    assert outcome is JobOutcome.WAITING
    assert detail == "Kling has no task with this job's id"
    assert job.status is JobStatus.PENDING
    # checked now: it goes to the back of the open-jobs index and waits another grace period
    assert job.reconciled_at == job.updated_at == w.clock.iso()


def test_a_pending_job_within_the_grace_period_waits_without_asking_kling() -> None:
    w = world()
    before = w.add("job-1", JobStatus.PENDING, quiet_minutes=GRACE_MINUTES - 1)
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.WAITING
    assert w.kling.calls == []
    assert job == before


def test_a_pending_job_whose_submit_lease_is_held_is_left_to_its_holder() -> None:
    w = world()
    # The lease is read against the reconciler's clock.
    before = w.add(
        "job-1",
        JobStatus.PENDING,
        quiet_minutes=60,
        submit_lease_owner="w-1",
        submit_lease_until=w.clock.millis() + 60_000,
    )
    w.kling.add(kling_task("t-7", "submitted", external="job-1"))
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.WAITING
    assert w.kling.calls == []
    assert job == before


def test_a_pending_job_whose_submit_lease_expired_is_looked_up() -> None:
    w = world()
    w.add(
        "job-1", JobStatus.PENDING, quiet_minutes=60, submit_lease_owner="w-1", submit_lease_until=w.clock.millis() - 1
    )
    w.kling.add(kling_task("t-7", "submitted", external="job-1"))
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.ADVANCED
    assert job.kling_task_id == "t-7"


# -- submitted / processing: queried -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.SUBMITTED, JobStatus.PROCESSING])
def test_a_job_quiet_for_less_than_the_stale_period_waits(status: JobStatus) -> None:
    w = world()
    before = w.add("job-1", status, quiet_minutes=STALE_MINUTES - 1)
    w.kling.add(kling_task("t-1", "succeed", images=1))
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.WAITING
    assert (w.kling.calls, job) == ([], before)


def test_a_stale_submitted_job_is_queried_and_advanced() -> None:
    w = world()
    w.add("job-1", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES)
    w.kling.add(kling_task("t-1", "processing", updated_at=2_000))
    outcome, detail, job = w.reconcile("job-1")
    assert (outcome, detail) == (JobOutcome.ADVANCED, "processing")
    assert w.kling.called("get_task") == ["t-1"]
    assert (job.status, job.kling_updated_at) == (JobStatus.PROCESSING, 2_000)


def test_a_stale_job_kling_has_no_news_about_is_stamped_and_waits_another_period() -> None:
    w = world()
    w.add("job-1", JobStatus.PROCESSING, quiet_minutes=STALE_MINUTES + 5, kling_status="processing")
    w.kling.add(kling_task("t-1", "processing"))
    outcome, detail, job = w.reconcile("job-1")
    assert (outcome, detail) == (JobOutcome.UNCHANGED, "Kling reports 'processing'")
    assert (job.status, job.reconciled_at, job.updated_at) == (JobStatus.PROCESSING, w.clock.iso(), w.clock.iso())


def test_a_stale_job_whose_task_succeeded_gets_its_images() -> None:
    w = world()
    w.add("job-1", JobStatus.PROCESSING, quiet_minutes=STALE_MINUTES)
    w.kling.add(kling_task("t-1", "succeed", images=2))
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.SUCCEEDED
    assert job.status is JobStatus.SUCCEEDED
    assert job.images is not None and [image.index for image in job.images] == [0, 1]
    assert w.finals == [job]


def test_a_stale_job_whose_task_failed_is_failed() -> None:
    w = world()
    w.add("job-1", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES)
    w.kling.add(kling_task("t-1", "failed", message="risk control"))
    outcome, detail, job = w.reconcile("job-1")
    assert (outcome, detail) == (JobOutcome.FAILED, "risk control")
    assert job.error is not None and job.error.code is ErrorCode.KLING_TASK_FAILED


def test_kling_not_answering_is_an_error_and_the_job_is_checked_again_later() -> None:
    w = world()
    w.add("job-1", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES)
    w.kling.tasks["t-1"] = KlingRetryableError("connection reset", retry_after=1.0)
    outcome, detail, job = w.reconcile("job-1")
    assert outcome is JobOutcome.ERROR
    assert detail is not None and "connection reset" in detail
    assert (job.status, job.reconciled_at) == (JobStatus.SUBMITTED, w.clock.iso())


def test_kling_answering_about_another_task_is_an_error() -> None:
    w = world()
    before = w.add("job-1", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES)
    w.kling.tasks["t-1"] = kling_task("t-2", "succeed", images=1)  # a relay's mix-up
    outcome, detail, job = w.reconcile("job-1")
    assert outcome is JobOutcome.ERROR
    assert detail is not None and "t-2" in detail
    assert (job.status, job.images, w.copier.calls) == (before.status, None, [])


# -- copying: the copy is retried ----------------------------------------------------------------------------------


def test_a_stale_copying_job_is_copied_again_and_succeeds() -> None:
    w = world()
    w.add(
        "job-1",
        JobStatus.COPYING,
        quiet_minutes=STALE_MINUTES,
        copy_attempts=1,
        copy_error={"code": "http_error", "message": "HTTP 503"},
    )
    w.kling.add(kling_task("t-1", "succeed", images=1))
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.SUCCEEDED
    assert (job.status, job.copy_attempts, job.copy_error) == (JobStatus.SUCCEEDED, 2, None)


def test_a_copy_that_fails_again_is_retried_next_time() -> None:
    w = world()
    w.add("job-1", JobStatus.COPYING, quiet_minutes=STALE_MINUTES, copy_attempts=1)
    w.kling.add(kling_task("t-1", "succeed", images=1))
    w.copier.results = [copy_error(http_status=503, url=URL)]
    outcome, detail, job = w.reconcile("job-1")
    assert outcome is JobOutcome.COPY_FAILED
    assert detail is not None and detail.startswith("copy attempt 2 failed")
    assert job.status is JobStatus.COPYING
    assert job.copy_error is not None and job.copy_error.http_status == 503
    assert job.copy_attempts == 2


def test_a_result_url_gone_after_the_last_copy_attempt_fails_the_job_as_expired() -> None:
    w = world()
    w.add("job-1", JobStatus.COPYING, quiet_minutes=STALE_MINUTES, copy_attempts=2)
    w.kling.add(kling_task("t-1", "succeed", images=1))
    w.copier.results = [copy_error(http_status=404, url=URL)]
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.EXPIRED
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.http_status, job.error.url) == (ErrorCode.RESULT_URL_EXPIRED, 404, URL)
    assert "3 copy attempts" in job.error.message
    assert job.copy_error is None
    assert w.finals == [job]


@pytest.mark.parametrize(
    ("attempts_before", "status"),
    [
        (1, 404),  # gone, but attempts are left: a relay may serve it again
        (2, 503),  # the last attempt, but the URL is not gone
    ],
)
def test_a_failed_copy_is_kept_for_a_retry_unless_the_url_is_gone_after_the_last_attempt(
    attempts_before: int, status: int
) -> None:
    w = world()
    w.add("job-1", JobStatus.COPYING, quiet_minutes=STALE_MINUTES, copy_attempts=attempts_before)
    w.kling.add(kling_task("t-1", "succeed", images=1))
    w.copier.results = [copy_error(http_status=status, url=URL)]
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.COPY_FAILED
    assert job.status is JobStatus.COPYING


# -- timing out ----------------------------------------------------------------------------------------------------


def test_a_job_past_the_maximum_age_without_progress_is_timed_out_with_the_reason() -> None:
    w = world()
    w.add("job-1", JobStatus.PROCESSING, quiet_minutes=STALE_MINUTES, age_hours=25, kling_status="processing")
    w.kling.add(kling_task("t-1", "processing"))
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.TIMED_OUT
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code is ErrorCode.TIMED_OUT
    message = job.error.message
    assert message.startswith("timed out: still processing 25 h after it was created")
    assert "RECONCILE_MAX_JOB_AGE_SECONDS allows 24 h" in message
    assert "Kling task t-1, last Kling status processing" in message
    assert "Kling reports 'processing'" in message
    assert w.finals == [job]


def test_a_job_past_the_maximum_age_is_due_even_if_it_was_just_checked() -> None:
    w = world()
    w.add("job-1", JobStatus.SUBMITTED, quiet_minutes=1, age_hours=MAX_AGE_HOURS)
    w.kling.tasks["t-1"] = KlingRetryableError("busy", retry_after=1.0)
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.TIMED_OUT
    assert job.error is not None and "Kling could not be asked" in job.error.message


def test_a_copy_still_failing_past_the_maximum_age_is_timed_out() -> None:
    w = world()
    w.add("job-1", JobStatus.COPYING, quiet_minutes=STALE_MINUTES, age_hours=30, copy_attempts=1)
    w.kling.add(kling_task("t-1", "succeed", images=1))
    w.copier.results = [copy_error(http_status=503, url=URL)]
    outcome, _, job = w.reconcile("job-1")
    assert outcome is JobOutcome.TIMED_OUT
    assert job.error is not None and "copy attempt 2 failed" in job.error.message


def test_a_job_finished_meanwhile_is_not_timed_out() -> None:
    w = world()
    seen = w.add("job-1", JobStatus.PROCESSING, quiet_minutes=STALE_MINUTES, age_hours=30)
    w.records.advance("job-1", JobStatus.SUCCEEDED)  # a callback finished it after the run read it
    w.finals.clear()
    w.kling.add(kling_task("t-1", "processing"))
    report = w.job_reconciler.reconcile(seen, deadline=time.monotonic() + 60)
    assert (report.outcome, report.detail) == (JobOutcome.UNCHANGED, "finished meanwhile")
    job = w.records.get("job-1")
    assert job is not None and (job.status, job.error) == (JobStatus.SUCCEEDED, None)
    assert w.finals == []


# -- one run -------------------------------------------------------------------------------------------------------


@pytest.fixture
def run_with() -> Iterator[Callable[..., tuple[Reconciler, World, MemoryDeadLetterQueue]]]:
    """A Reconciler over a fresh world (and a dead-letter queue), closed after the test."""
    made: list[Reconciler] = []

    def make(*letters: DeadLetter, receive_error: Exception | None = None, **overrides: Any) -> Any:
        w = world(**overrides)
        queue = MemoryDeadLetterQueue(*letters, receive_error=receive_error)
        sweeper = DeadLetterSweeper(
            queue, w.records, w.kling, w.progress, max_messages=w.options.reconcile_max_dead_letters_per_run
        )
        reconciler = Reconciler(w.records, w.job_reconciler, w.options, dead_letters=sweeper, clock=w.clock.now)
        made.append(reconciler)
        return reconciler, w, queue

    yield make
    for reconciler in made:
        reconciler.close()


def outcomes(report: RunReport) -> dict[str, int]:
    return {outcome.value: count for outcome, count in report.jobs.items() if count}


def test_a_run_reconciles_the_due_jobs_and_skips_the_rest(run_with: Any) -> None:
    reconciler, w, _ = run_with()
    w.add("due", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES + 1, task_id="t-due")
    w.add("quiet-pending", JobStatus.PENDING, quiet_minutes=GRACE_MINUTES + 1)
    w.add("recent", JobStatus.SUBMITTED, quiet_minutes=1, task_id="t-recent")
    w.add("pending-not-stale", JobStatus.SUBMITTED, quiet_minutes=GRACE_MINUTES + 1, task_id="t-early")
    w.add("done", JobStatus.SUCCEEDED, quiet_minutes=60, task_id="t-done")
    w.kling.add(kling_task("t-due", "processing", external="due"))
    report = reconciler.run(time.monotonic() + 60)
    # `recent` is newer than the smaller threshold: the index query leaves it out; `pending-not-stale` is read
    # (quiet past the grace period) but a submitted job waits for the stale period
    assert report.examined == 3
    assert outcomes(report) == {"advanced": 1, "waiting": 2}
    assert w.kling.called("get_task") == ["t-due"]
    assert w.kling.called("find_task_by_external_id") == ["quiet-pending"]
    assert not report.out_of_time and report.errors == []


def test_a_run_takes_at_most_the_per_run_limit_quietest_first(run_with: Any) -> None:
    reconciler, w, _ = run_with(reconcile_max_jobs_per_run=2)
    for number, quiet in enumerate([20, 50, 30, 40]):
        w.add(f"job-{number}", JobStatus.SUBMITTED, quiet_minutes=quiet, task_id=f"t-{number}")
        w.kling.add(kling_task(f"t-{number}", "processing", external=f"job-{number}"))
    report = reconciler.run(time.monotonic() + 60)
    assert report.examined == 2
    assert sorted(w.kling.called("get_task")) == ["t-1", "t-3"]  # quiet for 50 and 40 minutes
    assert w.records.items["job-0"].status is JobStatus.SUBMITTED


def test_no_job_is_started_after_the_deadline(run_with: Any) -> None:
    reconciler, w, queue = run_with()
    queue.waiting.append(DeadLetter("m-1", "rh-1", '{"job_id": "dead", "prompt": "p"}', receive_count=4))
    for number in range(3):
        w.add(f"job-{number}", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES, task_id=f"t-{number}")
    report = reconciler.run(time.monotonic() - 1)
    assert outcomes(report) == {"deferred": 3}
    assert report.out_of_time
    assert w.kling.calls == [] and queue.receives == []
    assert all(record.status is JobStatus.SUBMITTED for record in w.records.items.values())


def test_jobs_whose_turn_comes_after_the_deadline_are_deferred(run_with: Any) -> None:
    reconciler, w, _ = run_with(reconcile_concurrency=1)
    for number, quiet in enumerate([30, 20, 15]):
        w.add(f"job-{number}", JobStatus.SUBMITTED, quiet_minutes=quiet, task_id=f"t-{number}")
        w.kling.add(kling_task(f"t-{number}", "processing", external=f"job-{number}"))
    deadline = time.monotonic() + 2.0

    def first_call_outlasts_the_deadline(method: str, task_id: str) -> None:
        while task_id == "t-0" and time.monotonic() < deadline:  # a slow Kling: waits for the condition itself
            time.sleep(0.01)

    w.kling.on_call = first_call_outlasts_the_deadline
    report = reconciler.run(deadline)
    assert outcomes(report) == {"advanced": 1, "deferred": 2}
    assert report.out_of_time
    assert w.kling.called("get_task") == ["t-0"]


def test_one_jobs_unexpected_failure_does_not_stop_the_others(run_with: Any) -> None:
    reconciler, w, _ = run_with()
    for number in range(3):
        w.add(f"job-{number}", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES + number, task_id=f"t-{number}")
        w.kling.add(kling_task(f"t-{number}", "processing", external=f"job-{number}"))
    w.kling.tasks["t-1"] = RuntimeError("a bug")
    report = reconciler.run(time.monotonic() + 60)
    assert outcomes(report) == {"advanced": 2, "error": 1}
    assert [w.records.items[f"job-{n}"].status for n in range(3)] == [
        JobStatus.PROCESSING,
        JobStatus.SUBMITTED,
        JobStatus.PROCESSING,
    ]
    assert report.errors == []  # a job's failure is the job's outcome, not the run's


def test_a_failing_dead_letter_sweep_is_reported_and_open_jobs_are_still_reconciled(run_with: Any) -> None:
    reconciler, w, _ = run_with(receive_error=ConnectionError("SQS is unreachable"))
    w.add("job-1", JobStatus.SUBMITTED, quiet_minutes=STALE_MINUTES)
    w.kling.add(kling_task("t-1", "processing"))
    report = reconciler.run(time.monotonic() + 60)
    assert report.errors == ["dead-letter sweep: ConnectionError: SQS is unreachable"]
    assert outcomes(report) == {"advanced": 1}
    assert w.records.items["job-1"].status is JobStatus.PROCESSING
    assert report.as_dict()["errors"] == report.errors


def test_a_run_settles_the_dead_letters_first(run_with: Any) -> None:
    letter = DeadLetter("m-1", "rh-1", '{"job_id": "dead-1", "prompt": "a fox"}', receive_count=4)
    reconciler, w, queue = run_with(letter)
    report = reconciler.run(time.monotonic() + 60)
    assert report.dead_letters == {DeadLetterOutcome.RECORDED: 1}
    assert report.as_dict()["dead_letters"] == {"recorded": 1}
    assert queue.remaining == []
    assert w.records.items["dead-1"].status is JobStatus.FAILED
