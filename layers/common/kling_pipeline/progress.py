"""Move a job forward from a report of its Kling task: the one place that turns Kling's word into job state.

Used by the webhook (a callback body) and the reconciler (a task it read from Kling's query API). Every write
is a conditional JobRecords write, so duplicate, late and concurrent reports are harmless no-ops.

A callback body is a hint, not a fact: anyone holding a job's callback URL can send one. A report that would
end the job (`succeed`, `failed`) or bind it to a task (a job with no task id yet) is therefore confirmed by
reading the task from Kling's query API first, and what Kling says is applied; only progress reports
(`submitted`, `processing`) about the job's recorded task are taken from the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger

from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.record import COPY_ATTEMPTS, COPY_ERROR, JobRecord
from kling_pipeline.contract.status import KLING_STATUS_TO_JOB_STATUS, JobStatus
from kling_pipeline.kling.errors import KlingError
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.ports import CopyResult, ImageCopyError, JobRecords, KlingTasks, TaskImageCopier

logger = Logger(child=True)


class Outcome(StrEnum):
    UNCHANGED = "unchanged"  # duplicate, stale, late or unknown report: nothing written
    ADVANCED = "advanced"  # moved to submitted / processing
    SUCCEEDED = "succeeded"  # images stored, job final
    FAILED = "failed"  # Kling failed the task, job final
    COPY_FAILED = "copy_failed"  # job stays `copying` with `copy_error`; a later report or the reconciler retries


@dataclass(frozen=True)
class ProgressResult:
    outcome: Outcome
    record: JobRecord | None
    images_copied: int = 0
    bytes_copied: int = 0
    error: JobError | None = None


class TaskMismatchError(ValueError):
    """The report is about another Kling task than this job's."""


def task_mismatch(job: JobRecord, task: KlingTask, *, from_query_api: bool = False) -> str | None:
    """Why `task` is not this job's task, or None when it is.

    Kling may call back before submit recorded the task id; then the external id (our job id) links them. A task
    read from the query API by the job's external id may lack the echo (some relays drop `task_info`).
    """
    if job.kling_task_id is not None:
        if task.task_id != job.kling_task_id:
            return f"task_id: must be this job's task {job.kling_task_id} (got {task.task_id})"
        return None
    if task.external_task_id == job.job_id or (from_query_api and task.external_task_id is None):
        return None
    return f"external_task_id: must be this job's id {job.job_id} (got {task.external_task_id})"


class JobProgress:
    """Applies Kling task reports to jobs: forward-only status, images copied on `succeed`."""

    def __init__(self, records: JobRecords, kling: KlingTasks, copier: TaskImageCopier) -> None:
        self._records = records
        self._kling = kling
        self._copier = copier

    def apply(
        self,
        job: JobRecord,
        task: KlingTask,
        *,
        from_query_api: bool = False,
        deadline: float | None = None,
    ) -> ProgressResult:
        """Apply one report about `job`'s task.

        `from_query_api=True` says `task` was read from Kling's query API (the reconciler) and is applied as it
        is. Otherwise (a callback body) a report that ends or binds the job is confirmed with Kling first, so
        neither a failure nor an image URL is taken from the body. Raises TaskMismatchError for another task's
        report.
        """
        problem = task_mismatch(job, task, from_query_api=from_query_api)
        if problem:
            raise TaskMismatchError(problem)
        if job.status.is_final:
            return ProgressResult(Outcome.UNCHANGED, job)
        target = KLING_STATUS_TO_JOB_STATUS.get(task.task_status)
        if target is None:
            logger.warning("ignoring unknown Kling task status", extra={"kling_status": task.task_status})
            return ProgressResult(Outcome.UNCHANGED, job)
        if not from_query_api and (target.is_final or target is JobStatus.COPYING or job.kling_task_id is None):
            return self._apply_confirmed(job, task, deadline=deadline)
        if target is JobStatus.FAILED:
            return self._fail(job, task)
        if target is JobStatus.COPYING:
            return self._finish(job, task, deadline=deadline)
        record = self._records.advance(
            job.job_id,
            target,
            changes=_task_changes(task),
            kling_updated_at=task.updated_at,
            expected_task_id=task.task_id,
        )
        return ProgressResult(Outcome.ADVANCED if record else Outcome.UNCHANGED, record or job)

    def apply_progress(self, job_id: str, task: KlingTask) -> ProgressResult | None:
        """A progress report (`submitted`, `processing`) about the job's recorded task, in one conditional write
        and no read: the callback Kling sends most. None when the report is of another kind or the write's
        conditions (the status order, the task id, the report's time) did not hold; the caller then reads the job
        and applies the report with `apply`, which finds why (unknown job, another task, a duplicate)."""
        target = KLING_STATUS_TO_JOB_STATUS.get(task.task_status)
        if target not in (JobStatus.SUBMITTED, JobStatus.PROCESSING):
            return None
        # The write `apply` makes for this report once it has read the job; its conditions are what `apply`
        # checks on the read (a final job, an unbound job, another task refuse it).
        # The task id is not written again: the condition requires it to be the job's already.
        record = self._records.advance(
            job_id,
            target,
            changes={"kling_status": task.task_status},
            kling_updated_at=task.updated_at,
            bound_task_id=task.task_id,
        )
        return ProgressResult(Outcome.ADVANCED, record) if record is not None else None

    def _fail(self, job: JobRecord, task: KlingTask) -> ProgressResult:
        error = JobError(
            code=ErrorCode.KLING_TASK_FAILED,
            message=task.task_status_msg or "Kling reported the task failed without a reason",
        )
        record = self._records.advance(
            job.job_id,
            JobStatus.FAILED,
            changes={**_task_changes(task, final=True), "error": error.as_dict()},
            remove=[COPY_ERROR],
            expected_task_id=task.task_id,
        )
        if record is None:
            return ProgressResult(Outcome.UNCHANGED, job)
        logger.info("job failed at Kling", extra={"reason": error.message})
        return ProgressResult(Outcome.FAILED, record, error=error)

    def _apply_confirmed(self, job: JobRecord, reported: KlingTask, *, deadline: float | None) -> ProgressResult:
        """A callback that ends or binds the job: Kling's own view of the task is applied instead of the body."""
        try:
            confirmed = self._kling_view(job)
        except KlingError as exc:
            return self._unconfirmed(job, reported, f"reading the task back: {exc}")
        if confirmed is None:
            return self._unconfirmed(job, reported, "Kling's query API does not know this job's task (yet)")
        if confirmed.task_id != reported.task_id:
            raise TaskMismatchError(
                f"task_id: Kling's task for this job is {confirmed.task_id} (got {reported.task_id})"
            )
        if reported.succeeded and not confirmed.is_final:
            # Kling's query API can lag behind its own callback: hold the job at `copying` until they agree.
            message = f"Kling's query API reports {confirmed.task_status!r} for a task called back as succeeded"
            error = JobError(code=ErrorCode.KLING_STATUS_DISAGREES, message=message)
            return self._copy_failed_at_copying(job, reported, error)
        return self.apply(job, confirmed, from_query_api=True, deadline=deadline)

    def _kling_view(self, job: JobRecord) -> KlingTask | None:
        if job.kling_task_id is not None:
            return self._kling.get_task(job.kling_task_id)
        return self._kling.find_task_by_external_id(job.job_id)

    def _unconfirmed(self, job: JobRecord, reported: KlingTask, why: str) -> ProgressResult:
        """Kling could not confirm the report: nothing is bound or ended on the body's word. A `succeed` for the
        job's recorded task still moves it to `copying` with the reason, so the reconciler retries the copy."""
        error = JobError(code=ErrorCode.KLING_QUERY_FAILED, message=why)
        if reported.succeeded and job.kling_task_id == reported.task_id:
            return self._copy_failed_at_copying(job, reported, error)
        logger.warning("callback not confirmed by Kling; nothing recorded", extra={"error": error.as_dict()})
        return ProgressResult(Outcome.UNCHANGED, job, error=error)

    def _copy_failed_at_copying(self, job: JobRecord, reported: KlingTask, error: JobError) -> ProgressResult:
        may_copy, record = self._enter_copying(job, reported)
        if not may_copy:
            return ProgressResult(Outcome.UNCHANGED, record)
        return self._copy_failed(record, error)

    def _finish(self, job: JobRecord, task: KlingTask, *, deadline: float | None) -> ProgressResult:
        """`succeed` (as Kling's query API reports it): the job becomes `copying`, its images are stored, the job
        succeeds."""
        may_copy, record = self._enter_copying(job, task)
        if not may_copy:
            return ProgressResult(Outcome.UNCHANGED, record)
        try:
            copied = self._copier.copy_task_images(job.job_id, task, deadline=deadline)
        except ImageCopyError as exc:
            return self._copy_failed(record, exc.error)
        return self._succeed(record, task, copied)

    def _enter_copying(self, job: JobRecord, task: KlingTask) -> tuple[bool, JobRecord]:
        """(True, the job now `copying`), also when it already was (a retry); (False, the job as it is now) when
        it finished meanwhile or is copying another task."""
        record = self._records.advance(
            job.job_id, JobStatus.COPYING, changes=_task_changes(task, final=True), expected_task_id=task.task_id
        )
        if record is not None:
            return True, record
        current = self._records.get(job.job_id) or job
        copying = current.status is JobStatus.COPYING and not task_mismatch(current, task, from_query_api=True)
        return copying, current

    def _succeed(self, record: JobRecord, task: KlingTask, copied: CopyResult) -> ProgressResult:
        final = self._records.advance(
            record.job_id,
            JobStatus.SUCCEEDED,
            changes={
                "images": [image.model_dump(exclude_none=True) for image in copied.images],
                COPY_ATTEMPTS: record.copies_tried + 1,
            },
            remove=[COPY_ERROR],
            expected_task_id=task.task_id,
        )
        if final is None:  # a concurrent report finished it first; the objects are the same
            return ProgressResult(Outcome.UNCHANGED, self._records.get(record.job_id) or record)
        logger.info("job succeeded", extra={"images": copied.objects_copied, "bytes": copied.bytes_copied})
        return ProgressResult(Outcome.SUCCEEDED, final, copied.objects_copied, copied.bytes_copied)

    def _copy_failed(self, record: JobRecord, error: JobError) -> ProgressResult:
        logger.warning("image copy failed; job stays copying", extra={"error": error.as_dict()})
        updated = self._records.update_open(
            record.job_id,
            expected_status=JobStatus.COPYING,
            changes={COPY_ERROR: error.as_dict(), COPY_ATTEMPTS: record.copies_tried + 1},
        )
        return ProgressResult(Outcome.COPY_FAILED, updated or record, error=error)


def _task_changes(task: KlingTask, *, final: bool = False) -> dict[str, Any]:
    changes: dict[str, Any] = {"kling_task_id": task.task_id, "kling_status": task.task_status}
    # Kling's final statuses end the task, so a final report is never stale: its timestamp is recorded but
    # not made a condition (a clock quirk must not lose a `succeed`). Non-final reports use it as a condition.
    if final and task.updated_at is not None:
        changes["kling_updated_at"] = task.updated_at
    units = deducted_units(task) if final else None
    if units is not None:
        changes["units"] = units  # what Kling charged: settles the job's budget estimate when it is final
    return changes


def deducted_units(task: KlingTask) -> float | None:
    """Kling's `final_unit_deduction` as a number (Kling sends it as a string), or None if absent or garbled."""
    try:
        return float(task.final_unit_deduction) if task.final_unit_deduction is not None else None
    except ValueError:
        return None
