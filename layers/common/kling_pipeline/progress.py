"""Move a job forward from a report of its Kling task: the one place that turns Kling's word into job state.

Used by the webhook (a callback body) and the reconciler (a task it read from Kling's query API). Every write
is a conditional JobStore write, so duplicate, late and concurrent reports are harmless no-ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from kling_pipeline.adapters.dynamodb import JobStore
from kling_pipeline.adapters.image_copy import CopyResult, ImageCopyError
from kling_pipeline.contract.errors import JobError
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import KLING_STATUS_TO_JOB_STATUS, JobStatus
from kling_pipeline.kling import KlingError, KlingTask

KLING_TASK_FAILED = "kling_task_failed"
COPY_ERROR = "copy_error"
COPY_ATTEMPTS = "copy_attempts"

logger = Logger(child=True)


class TaskReader(Protocol):
    """Kling's query API (KlingClient satisfies it)."""

    def get_task(self, task_id: str) -> KlingTask: ...


class TaskImageCopier(Protocol):
    """Stores a succeeded task's images (ImageCopier satisfies it)."""

    def copy_task_images(self, job_id: str, task: KlingTask, *, deadline: float | None = None) -> CopyResult: ...


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

    def __init__(self, store: JobStore, kling: TaskReader, copier: TaskImageCopier) -> None:
        self._store = store
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
        record = self._store.advance(
            job.job_id,
            target,
            changes=_task_changes(task),
            kling_updated_at=task.updated_at,
            expected_task_id=task.task_id,
        )
        return ProgressResult(Outcome.ADVANCED if record else Outcome.UNCHANGED, record or job)

    def _fail(self, job: JobRecord, task: KlingTask) -> ProgressResult:
        error = JobError(KLING_TASK_FAILED, task.task_status_msg or "Kling reported the task failed without a reason")
        record = self._store.advance(
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
        record = self._store.advance(
            job.job_id, JobStatus.COPYING, changes=_task_changes(task, final=True), expected_task_id=task.task_id
        )
        if record is None:  # already copying (a retry), or finished meanwhile
            record = self._store.get(job.job_id)
            if (
                record is None
                or record.status is not JobStatus.COPYING
                or task_mismatch(record, task, from_query_api=True)
            ):
                return ProgressResult(Outcome.UNCHANGED, record or job)
        if not from_query_api:
            try:
                task = self._kling.get_task(task.task_id)
            except KlingError as exc:
                return self._copy_failed(record, JobError("kling_query_failed", f"reading the task back: {exc}"))
            if task.failed:
                return self._fail(record, task)
            if not task.succeeded:
                message = f"Kling's query API reports {task.task_status!r} for a task called back as succeeded"
                return self._copy_failed(record, JobError("kling_status_disagrees", message))
        try:
            copied = self._copier.copy_task_images(job.job_id, task, deadline=deadline)
        except ImageCopyError as exc:
            return self._copy_failed(record, exc.to_job_error())
        final = self._store.advance(
            job.job_id,
            JobStatus.SUCCEEDED,
            changes={
                "images": [image.model_dump(exclude_none=True) for image in copied.images],
                COPY_ATTEMPTS: _attempts(record) + 1,
            },
            remove=[COPY_ERROR],
            expected_task_id=task.task_id,
        )
        if final is None:  # a concurrent report finished it first; the objects are the same
            return ProgressResult(Outcome.UNCHANGED, self._store.get(job.job_id) or record)
        logger.info("job succeeded", extra={"images": copied.objects_copied, "bytes": copied.bytes_copied})
        return ProgressResult(Outcome.SUCCEEDED, final, copied.objects_copied, copied.bytes_copied)

    def _copy_failed(self, record: JobRecord, error: JobError) -> ProgressResult:
        logger.warning("image copy failed; job stays copying", extra={"error": error.as_dict()})
        updated = self._store.update_open(
            record.job_id,
            expected_status=JobStatus.COPYING,
            changes={COPY_ERROR: error.as_dict(), COPY_ATTEMPTS: _attempts(record) + 1},
        )
        return ProgressResult(Outcome.COPY_FAILED, updated or record, error=error)


def _task_changes(task: KlingTask, *, final: bool = False) -> dict[str, Any]:
    changes: dict[str, Any] = {"kling_task_id": task.task_id, "kling_status": task.task_status}
    # Kling's final statuses end the task, so a final report is never stale: its timestamp is recorded but
    # not made a condition (a clock quirk must not lose a `succeed`). Non-final reports use it as a condition.
    if final and task.updated_at is not None:
        changes["kling_updated_at"] = task.updated_at
    return changes


def _attempts(record: JobRecord) -> int:
    value = (record.model_extra or {}).get(COPY_ATTEMPTS, 0)
    return value if isinstance(value, int) else 0
