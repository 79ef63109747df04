"""Move a job forward from a report of its Kling task: the one place that turns Kling's word into job state.

Used by the webhook (a callback body) and the reconciler (a task it read from Kling's query API). Every write
is a conditional JobRecords write, so duplicate, late and concurrent reports are harmless no-ops.
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

        `from_query_api=True` says `task` was read from Kling's query API (the reconciler): its image URLs are
        used as they are. Otherwise (a callback body) a `succeed` is read back from Kling before any image
        URL is trusted. Raises TaskMismatchError for another task's report.
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
        if target is JobStatus.FAILED:
            return self._fail(job, task)
        if target is JobStatus.COPYING:
            return self._finish(job, task, from_query_api=from_query_api, deadline=deadline)
        record = self._records.advance(
            job.job_id,
            target,
            changes=_task_changes(task),
            kling_updated_at=task.updated_at,
            expected_task_id=task.task_id,
        )
        return ProgressResult(Outcome.ADVANCED if record else Outcome.UNCHANGED, record or job)

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

    def _finish(
        self, job: JobRecord, task: KlingTask, *, from_query_api: bool, deadline: float | None
    ) -> ProgressResult:
        """`succeed`: the job becomes `copying`, the task is confirmed, its images are stored, the job succeeds."""
        may_copy, record = self._enter_copying(job, task)
        if not may_copy:
            return ProgressResult(Outcome.UNCHANGED, record)
        if not from_query_api:
            confirmed = self._read_back(record, task)
            if isinstance(confirmed, ProgressResult):
                return confirmed
            task = confirmed
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

    def _read_back(self, record: JobRecord, reported: KlingTask) -> KlingTask | ProgressResult:
        """A callback's `succeed` as Kling's query API tells it (only that task's image URLs are trusted), or the
        result of acting on what Kling said instead."""
        try:
            task = self._kling.get_task(reported.task_id)
        except KlingError as exc:
            error = JobError(code=ErrorCode.KLING_QUERY_FAILED, message=f"reading the task back: {exc}")
            return self._copy_failed(record, error)
        if task.failed:
            return self._fail(record, task)
        if not task.succeeded:
            message = f"Kling's query API reports {task.task_status!r} for a task called back as succeeded"
            return self._copy_failed(record, JobError(code=ErrorCode.KLING_STATUS_DISAGREES, message=message))
        return task

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
    return changes
