"""The reconciler: every open job reaches a final state even when callbacks are lost or copies fail.

One run: settle the jobs DLQ's new dead letters (dead_letters.py), then read open jobs from the sparse
`open-jobs` index (never a scan), quietest first, and act on each that is due (reconcile_policy.next_step):
- `pending` past the grace period: look the task up at Kling by external_task_id and adopt it;
- `submitted` / `processing` quiet for RECONCILE_STALE_SECONDS: read the task from Kling's query API;
- `copying` quiet as long: read the task and copy again.
Kling's answer goes through JobProgress, the state-transition code the webhook uses. A check that changes
nothing stamps `reconciled_at` (which moves `updated_at`), so the job goes to the back of the index and is
checked again only after another quiet period. Expired result URLs and jobs past the maximum age are failed
with a reason. All writes are conditional: runs may overlap each other and the webhook.
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger

from kling_pipeline.contract.clock import iso_timestamp, utc_now
from kling_pipeline.contract.errors import JobError
from kling_pipeline.contract.job import DEFAULT_MODEL_NAME
from kling_pipeline.contract.json_text import json_object_or_none
from kling_pipeline.contract.lease import held_until_ms
from kling_pipeline.contract.record import COPY_ERROR, RECONCILED_AT, JobRecord
from kling_pipeline.contract.settings import ReconcileOptions
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.governor.governor import Governor
from kling_pipeline.kling.errors import KlingError
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.ports import JobQueue, JobRecords, KlingTasks
from kling_pipeline.progress import JobProgress, Outcome, ProgressResult, TaskMismatchError
from kling_pipeline.reconcile.dead_letters import DeadLetterOutcome, DeadLetterSweeper
from kling_pipeline.reconcile.policy import (
    Step,
    expired_result_url,
    is_too_old,
    next_step,
    open_jobs_cutoff,
    timed_out_error,
)

logger = Logger(child=True)


class JobOutcome(StrEnum):
    WAITING = "waiting"  # not due, held by submit, or Kling has no task yet (pending)
    UNCHANGED = "unchanged"  # Kling's news changed nothing; checked again after a quiet period
    ADVANCED = "advanced"  # adopted or moved to submitted / processing
    SUCCEEDED = "succeeded"  # images stored, job final
    FAILED = "failed"  # Kling failed the task
    COPY_FAILED = "copy_failed"  # the copy failed again; retried next time
    EXPIRED = "expired"  # failed: the result URLs are gone
    TIMED_OUT = "timed_out"  # failed: past RECONCILE_MAX_JOB_AGE_SECONDS
    ERROR = "error"  # Kling could not be asked, or answered about another task; retried next time
    DEFERRED = "deferred"  # the run's time was up before this job's turn
    ANNOUNCED = "announced"  # a final job's event that had failed to go out was published
    REQUEUED = "requeued"  # a deferred job went back on the jobs queue: its day's budget opened


@dataclass(frozen=True)
class JobReport:
    job_id: str
    outcome: JobOutcome
    detail: str | None = None
    raised: bool = False  # the outcome is ERROR because reconciling the job raised, not because of Kling


@dataclass
class RunReport:
    """What one run did: per-job outcomes, dead letters settled, and whether it stopped early."""

    jobs: Counter[JobOutcome] = field(default_factory=Counter)
    dead_letters: Counter[DeadLetterOutcome] = field(default_factory=Counter)
    examined: int = 0
    out_of_time: bool = False
    elapsed_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # failures of the run itself (not of one job)
    governor: dict[str, float] = field(default_factory=dict)  # the account's state after the run (metrics)
    # Jobs whose reconcile raised (a bug, an AWS call refused): counted in jobs[ERROR] too, but published on
    # their own, because the run goes on and succeeds, and Kling's passing errors must not hide them.
    job_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "jobs": {outcome.value: count for outcome, count in sorted(self.jobs.items())},
            "dead_letters": {outcome.value: count for outcome, count in sorted(self.dead_letters.items())},
            "out_of_time": self.out_of_time,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "errors": list(self.errors),
            "job_errors": self.job_errors,
            **({"governor": dict(self.governor)} if self.governor else {}),
        }


class JobReconciler:
    """Brings one open job up to date with Kling (thread-safe when its ports are)."""

    def __init__(
        self,
        store: JobRecords,
        kling: KlingTasks,
        progress: JobProgress,
        options: ReconcileOptions,
        *,
        queue: JobQueue | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """`queue`: the jobs queue, where deferred jobs go back when their budget opens."""
        self._store = store
        self._kling = kling
        self._progress = progress
        self._options = options
        self._queue = queue
        self._clock = clock

    def reconcile(self, job: JobRecord, *, deadline: float | None = None) -> JobReport:
        if job.status.is_final:  # on the index only while its event is still to be published
            if self._store.announce(job):
                return JobReport(job.job_id, JobOutcome.ANNOUNCED)
            return JobReport(job.job_id, JobOutcome.ERROR, "its event could not be published (see the log)")
        now = self._clock()
        held_for = max(0.0, (held_until_ms(job) - int(now.timestamp() * 1000)) / 1000)
        step = next_step(job, now, self._options, lease_seconds_left=held_for)
        if step is Step.WAIT:
            return JobReport(job.job_id, JobOutcome.WAITING)
        if step is Step.REQUEUE:
            return self._requeue(job, now)
        try:
            task = self._read_task(job, step)
        except KlingError as exc:
            return self._no_progress(job, now, JobOutcome.ERROR, f"Kling could not be asked: {exc}")
        if task is None:
            return self._no_progress(job, now, JobOutcome.WAITING, "Kling has no task with this job's id")
        try:
            result = self._progress.apply(job, task, from_query_api=True, deadline=deadline)
        except TaskMismatchError as exc:
            return self._no_progress(job, now, JobOutcome.ERROR, str(exc))
        except KlingError as exc:  # a progress step that asks Kling again
            return self._no_progress(job, now, JobOutcome.ERROR, f"Kling could not be asked: {exc}")
        return self._after(job, now, task, result)

    def _requeue(self, job: JobRecord, now: datetime) -> JobReport:
        """The day's budget opened: the deferred job's message goes back on the jobs queue (submit reserves the
        new day's budget, or defers it again). Deferred longest ago goes first: the index is quietest first."""
        body = json_object_or_none(job.queued_body or "")
        if self._queue is None or body is None:
            return JobReport(job.job_id, JobOutcome.WAITING, "deferred, but nothing to send it again with")
        self._queue.enqueue(body, source=job.source)
        self._store.update_open(
            job.job_id,
            expected_status=JobStatus.DEFERRED,
            changes={"wait_reason": f"re-queued at {iso_timestamp(now)}: the day's unit budget opened"},
            remove=["deferred_until"],
        )
        return JobReport(job.job_id, JobOutcome.REQUEUED)

    def _read_task(self, job: JobRecord, step: Step) -> KlingTask | None:
        if step is Step.LOOK_UP or job.kling_task_id is None:
            return self._kling.find_task_by_external_id(job.job_id)
        return self._kling.get_task(job.kling_task_id)

    def _after(self, job: JobRecord, now: datetime, task: KlingTask, result: ProgressResult) -> JobReport:
        if result.outcome is Outcome.SUCCEEDED:
            return JobReport(job.job_id, JobOutcome.SUCCEEDED)
        if result.outcome is Outcome.FAILED:
            return JobReport(job.job_id, JobOutcome.FAILED, result.error.message if result.error else None)
        if result.outcome is Outcome.ADVANCED:
            return JobReport(job.job_id, JobOutcome.ADVANCED, task.task_status)
        if result.outcome is Outcome.COPY_FAILED:
            return self._copy_failed(result.record or job, now, result.error)
        return self._no_progress(job, now, JobOutcome.UNCHANGED, f"Kling reports {task.task_status!r}")

    def _copy_failed(self, job: JobRecord, now: datetime, error: JobError | None) -> JobReport:
        attempts = job.copies_tried
        expired = expired_result_url(error)
        if expired is not None and attempts >= self._options.reconcile_max_copy_attempts:
            return self._fail(job, expired.error(attempts), JobOutcome.EXPIRED)
        detail = f"copy attempt {attempts} failed: {error.message}" if error else f"copy attempt {attempts} failed"
        if is_too_old(job, now, self._options):
            return self._fail(job, timed_out_error(job, now, self._options, detail), JobOutcome.TIMED_OUT)
        return JobReport(job.job_id, JobOutcome.COPY_FAILED, detail)

    def _no_progress(self, job: JobRecord, now: datetime, outcome: JobOutcome, detail: str) -> JobReport:
        """Nothing moved: time the job out if it is too old, else stamp it so others get their turn first."""
        if is_too_old(job, now, self._options):
            return self._fail(job, timed_out_error(job, now, self._options, detail), JobOutcome.TIMED_OUT)
        stamp = iso_timestamp(now)
        self._store.update_open(
            job.job_id, expected_status=job.status, changes={RECONCILED_AT: stamp, "updated_at": stamp}
        )
        return JobReport(job.job_id, outcome, detail)

    def _fail(self, job: JobRecord, error: JobError, outcome: JobOutcome) -> JobReport:
        failed = self._store.advance(
            job.job_id,
            JobStatus.FAILED,
            changes={"error": error.as_dict()},
            remove=[COPY_ERROR],
            unless_held_at=int(self._clock().timestamp() * 1000),
        )
        if failed is None:  # finished meanwhile (a callback, another run): its own outcome stands
            return JobReport(job.job_id, JobOutcome.UNCHANGED, "finished meanwhile")
        return JobReport(job.job_id, outcome, error.message)


class Reconciler:
    """One scheduled run: the DLQ sweep, then up to RECONCILE_MAX_JOBS_PER_RUN open jobs, within a deadline."""

    def __init__(
        self,
        store: JobRecords,
        job_reconciler: JobReconciler,
        options: ReconcileOptions,
        *,
        dead_letters: DeadLetterSweeper | None = None,
        governor: Governor | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._options = options
        self._dead_letters = dead_letters
        self._governor = governor if governor is not None and governor.governs else None
        self._clock = clock
        self._job_reconciler = job_reconciler
        self._executor = ThreadPoolExecutor(max_workers=options.reconcile_concurrency, thread_name_prefix="reconcile")

    def run(self, deadline: float) -> RunReport:
        """`deadline` is a time.monotonic() value: no job is started after it, and copies stop at it."""
        started = time.monotonic()
        report = RunReport()
        if self._dead_letters is not None:
            try:
                report.dead_letters = self._dead_letters.sweep(deadline)
            except Exception as exc:
                # SQS trouble must not keep the open jobs waiting; the run still reports failure at the end.
                logger.exception("the dead-letter sweep failed; open jobs are reconciled anyway")
                report.errors.append(f"dead-letter sweep: {type(exc).__name__}: {exc}")
        if self._governor is not None:
            report.governor = self._govern(self._governor)
        cutoff = open_jobs_cutoff(self._clock(), self._options)
        jobs = list(self._store.open_jobs(updated_before=cutoff, limit=self._options.reconcile_max_jobs_per_run))
        report.examined = len(jobs)
        # copy_context: each job runs with the invocation's context (its log keys; what a caller traces).
        runs = [self._executor.submit(contextvars.copy_context().run, self._reconcile, job, deadline) for job in jobs]
        for job_report in (run.result() for run in runs):
            report.jobs[job_report.outcome] += 1
            report.job_errors += job_report.raised
        report.out_of_time = report.jobs[JobOutcome.DEFERRED] > 0 or time.monotonic() >= deadline
        report.elapsed_seconds = time.monotonic() - started
        return report

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _govern(self, governor: Governor) -> dict[str, float]:
        """Repair the slot ledger from what open jobs really hold; the account's state, for the metrics."""
        held = self._store.held_slots()
        drift = governor.repair(held, [DEFAULT_MODEL_NAME])
        state: dict[str, float] = {"slot_drift_repaired": float(sum(abs(d) for d in drift.values()))}
        slots = governor.state(DEFAULT_MODEL_NAME)
        if slots is not None:
            state.update(slots_in_use=float(slots.in_use), effective_limit=float(slots.effective))
        budget = governor.budget_today()
        if budget is not None and budget.budget > 0:
            state.update(
                units_spent_today=budget.spent,
                units_reserved_today=budget.reserved,
                budget_used_percent=round(100 * budget.reserved / budget.budget, 1),
            )
        return state

    def _reconcile(self, job: JobRecord, deadline: float) -> JobReport:
        if time.monotonic() >= deadline:
            return JobReport(job.job_id, JobOutcome.DEFERRED)
        logger.thread_safe_append_keys(job_id=job.job_id, status=job.status.value)
        try:
            job_report = self._job_reconciler.reconcile(job, deadline=deadline)
        except Exception:
            # One job's surprise (a DynamoDB error, a bug) must not stop the others; it is retried next run.
            logger.exception("reconciling the job failed unexpectedly")
            job_report = JobReport(job.job_id, JobOutcome.ERROR, "unexpected error (see the log)", raised=True)
        if job_report.outcome is not JobOutcome.WAITING or job_report.detail:
            logger.info("job reconciled", extra={"outcome": job_report.outcome.value, "detail": job_report.detail})
        logger.thread_safe_remove_keys(["job_id", "status"])
        return job_report
