"""When the reconciler acts on an open job, and the reasons it records when it gives one up (pure, no I/O).

Thresholds come from the environment (RECONCILE_*), validated once at cold start like every other variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from kling_pipeline.contract.clock import iso_timestamp, parse_timestamp
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import ReconcileOptions
from kling_pipeline.contract.status import JobStatus

# What a result URL that Kling (or a relay) deleted answers with; anything else may pass and is retried.
GONE_STATUSES = frozenset({403, 404, 410})


class Step(StrEnum):
    """What the reconciler does with one open job this run."""

    WAIT = "wait"  # not due yet, or final, or its submitter holds it
    LOOK_UP = "look_up"  # pending: does Kling have a task with our external_task_id?
    QUERY = "query"  # submitted / processing: Kling's word on the task
    RETRY_COPY = "retry_copy"  # copying: read the task and copy its images again
    REQUEUE = "requeue"  # deferred: the next day's budget is open, the job goes back on the jobs queue


def next_step(job: JobRecord, now: datetime, options: ReconcileOptions, *, lease_seconds_left: float = 0.0) -> Step:
    """Due when the job has been quiet for its status's threshold, or is past the maximum age.

    `lease_seconds_left`: how long a submit delivery still holds a pending job (its lease, or a retry delay it
    waits out); while it does, the job is the delivery's business.
    """
    if job.status.is_final:
        return Step.WAIT
    if job.status is JobStatus.DEFERRED:  # waiting on purpose: never timed out, due when its budget opens
        opens = parse_timestamp(job.deferred_until)
        return Step.REQUEUE if opens is not None and now >= opens else Step.WAIT
    if job.status is JobStatus.PENDING:
        if lease_seconds_left > 0:  # a submit delivery is talking to Kling for it, or will again soon
            return Step.WAIT
        threshold, step = options.pending_grace, Step.LOOK_UP
    elif job.status is JobStatus.COPYING:
        threshold, step = options.stale, Step.RETRY_COPY
    else:
        threshold, step = options.stale, Step.QUERY
    if is_too_old(job, now, options) or quiet_for(job, now) >= threshold:
        return step
    return Step.WAIT


def quiet_for(job: JobRecord, now: datetime) -> timedelta:
    """Time since the job's last write (an unreadable timestamp counts as long ago: act rather than stall)."""
    updated = parse_timestamp(job.updated_at)
    return now - updated if updated is not None else timedelta.max


def age(job: JobRecord, now: datetime) -> timedelta:
    """Time since the job was created (an unreadable timestamp counts as new: never time a job out by it)."""
    created = parse_timestamp(job.created_at)
    return now - created if created is not None else timedelta(0)


def is_too_old(job: JobRecord, now: datetime, options: ReconcileOptions) -> bool:
    return age(job, now) >= options.max_job_age


def open_jobs_cutoff(now: datetime, options: ReconcileOptions) -> str:
    """`updated_before` for the open-jobs index: every job quiet for at least the smaller threshold.

    The index compares `updated_at < cutoff`; one millisecond more makes it `<=` now - threshold.
    """
    quiet = min(options.pending_grace, options.stale)
    return iso_timestamp(now - quiet + timedelta(milliseconds=1))


@dataclass(frozen=True)
class ExpiredUrl:
    """A result image whose URL answered as if it had been deleted."""

    label: str  # `image 0` or `image 0 (watermark)`
    url: str
    status: int

    def error(self, attempts: int) -> JobError:
        message = (
            f"{self.label} download failed: HTTP {self.status} from {self.url}: result URL expired or removed "
            f"(Kling deletes results after 30 days, some relays sooner; {attempts} copy attempts)"
        )
        return JobError(
            code=ErrorCode.RESULT_URL_EXPIRED, message=message, image=self.label, url=self.url, http_status=self.status
        )


def expired_result_url(copy_error: JobError | None) -> ExpiredUrl | None:
    """The download of a failed copy whose URL answered as deleted (403/404/410), if that is why it failed."""
    if copy_error is None or copy_error.http_status not in GONE_STATUSES or copy_error.url is None:
        return None
    return ExpiredUrl(copy_error.image or "image", copy_error.url, copy_error.http_status)


def timed_out_error(job: JobRecord, now: datetime, options: ReconcileOptions, detail: str | None = None) -> JobError:
    """Why a job that outlived RECONCILE_MAX_JOB_AGE_SECONDS was failed: its age, where it was stuck, the last news."""
    message = (
        f"timed out: still {job.status.value} {duration(age(job, now))} after it was created "
        f"(RECONCILE_MAX_JOB_AGE_SECONDS allows {duration(options.max_job_age)})"
    )
    if job.kling_task_id:
        message += f"; Kling task {job.kling_task_id}, last Kling status {job.kling_status or 'unknown'}"
    if detail:
        message += f"; {detail}"
    return JobError(code=ErrorCode.TIMED_OUT, message=message)


def duration(span: timedelta) -> str:
    """`45 s`, `12 min`, `25 h`, `3 d`: coarse, for people."""
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
